"""`python -m snakemake`, with the Slurm executor checking its jobs at a steady pace (test cluster only).

snakemake-executor-plugin-slurm waits 10 s longer after every status check in which no job
completed (up to 180 s; a failed job does not reset it). Right for a busy site, but on the
one-node test cluster a job that ended is then noticed up to a minute late, and a run with
failures or long training jobs spends most of its time asleep. Here every wait is the first one
(--slurm-init-seconds-before-status-checks). Only this controller's sleep changes: Slurm, sbatch,
sacct and the jobs are the real ones.

    python tests/slurm/steady_polling.py [snakemake arguments]
"""

from __future__ import annotations

from snakemake_executor_plugin_slurm import Executor
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

# Fail loudly when a new plugin version renames what this relies on (not a silent slow test).
assert isinstance(RemoteExecutor.__dict__.get("next_seconds_between_status_checks"), property)
_check_active_jobs = Executor.check_active_jobs


async def _check_then_wait_the_initial_interval(self, active_jobs):
    async for job in _check_active_jobs(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = (
        self.workflow.executor_settings.init_seconds_before_status_checks
    )


Executor.check_active_jobs = _check_then_wait_the_initial_interval

if __name__ == "__main__":
    from snakemake.cli import main

    main()
