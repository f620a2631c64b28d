"""Rule champion: champion.json (chosen on validation only) and the parallel-coordinates plot."""

from pcamflow.evaluation.aggregate import write_champion
from pcamflow.smk import run_script


def main(smk):
    write_champion(
        smk.input.runs,
        smk.input.avg,
        smk.params.grid_keys,
        smk.params.metric,
        smk.params.training,
        smk.output.champion,
        smk.output.parallel,
        min_seeds=smk.params.min_seeds,
    )


run_script(snakemake, main)
