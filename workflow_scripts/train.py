"""Rule train: one (grid point, seed) -> history, metrics, checkpoints, run.json, TensorBoard events.

This process only supervises: the training runs in a child (pcamflow.training.job), so a run killed
by a signal (the OOM killer's SIGKILL) is still recorded. On its last attempt a run that fails is
recorded as failed in those outputs (pcamflow.training.runstatus), so the rest of the sweep goes on;
earlier attempts fail, and Snakemake retries them.
"""

from pathlib import Path

from pcamflow.config import operational_settings
from pcamflow.smk import run_script
from pcamflow.training.job import supervise_training
from pcamflow.training.runconfig import make_run_config


def main(smk):
    # operational keys are not params (changing one must not retrain): read from the config
    training = {**smk.params.training, **operational_settings(smk.config, "training")}
    training["threads"] = smk.threads  # what Snakemake granted (--set-threads)
    run_config = make_run_config(smk.params.point, smk.params.seed, training, smk.params.store)
    # a Preempted run (checkpointed on SIGTERM/SIGUSR1) exits 75: the retry resumes it
    supervise_training(
        run_config,
        Path(smk.output.history).parent,
        smk.params.state_dir,
        attempt=smk.resources.attempt,
        attempts=smk.resources.attempts,
        live_dir=smk.params.live_dir,
        log_path=smk.log[0],
    )


run_script(snakemake, main)
