"""Rule train: one (grid point, seed) -> history, metrics, checkpoints, run.json, TensorBoard events."""

from pathlib import Path

from pcamflow.config import operational_settings
from pcamflow.smk import run_script
from pcamflow.training.train import make_run_config, run_training


def main(smk):
    # operational keys are not params (changing one must not retrain): read from the config
    training = {**smk.params.training, **operational_settings(smk.config, "training")}
    training["threads"] = smk.threads  # what Snakemake granted (--set-threads)
    run_config = make_run_config(smk.params.point, smk.params.seed, training, smk.params.data)
    # a Preempted run (checkpointed on SIGTERM/SIGUSR1) exits 75 in run_script: the retry resumes it
    run_training(run_config, Path(smk.output.history).parent, smk.params.state_dir)


run_script(snakemake, main)
