"""Rule train: one (grid point, seed) -> history, metrics, checkpoints, run.json, TensorBoard events."""

import sys
from pathlib import Path

from pcamflow.smk import run_script
from pcamflow.train import Preempted, make_run_config, run_training


def main(smk):
    training = dict(smk.params.training, threads=smk.threads)  # what Snakemake granted (--set-threads)
    run_config = make_run_config(smk.params.point, smk.params.seed, training, smk.params.data)
    try:
        run_training(run_config, Path(smk.output.history).parent, smk.params.state_dir)
    except Preempted as stop:
        # checkpointed on SIGTERM/SIGUSR1: a non-zero exit lets Snakemake's retry resume the run
        print(f"pcamflow: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)


run_script(snakemake, main)
