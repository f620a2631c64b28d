"""Rule preflight: the checks a training job's node must pass -> results/preflight/train.json."""

from pathlib import Path

from pcamflow.smk import run_script
from pcamflow.training.preflight import run_preflight


def main(smk):
    training = dict(smk.params.training, threads=smk.threads)  # what Snakemake granted (--set-threads)
    run_preflight(
        smk.params.points,
        smk.params.seed,
        training,
        smk.params.store,
        smk.output[0],
        experiment_root=Path(smk.params.experiment_record).parent,
    )


run_script(snakemake, main)
