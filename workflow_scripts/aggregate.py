"""Rule aggregate: runs.csv and metrics_avg.csv (mean and std over seeds at each run's best epoch)."""

from pathlib import Path

from pcamflow.evaluation.aggregate import write_aggregate
from pcamflow.smk import run_script


def main(smk):
    run_dirs = [Path(h).parent for h in smk.input.histories]
    write_aggregate(
        smk.params.runs,
        run_dirs,
        smk.params.grid_keys,
        smk.output.runs,
        smk.output.avg,
        smk.output.avg_html,
        smk.output.failed,
    )


run_script(snakemake, main)
