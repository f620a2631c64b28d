"""One attempt of a training job: train the run; on its last attempt, record a failure in the run's
outputs (pcamflow.training.runstatus) instead of raising it. Fault injection for tests and drills.

The trainer (torch) is imported only when an attempt trains, so the workflow's supervisor process
(pcamflow.training.job), which imports this module, stays small.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import pickle
import signal

from pcamflow.errors import DataChanged, Preempted, disk_full_line, first_line
from pcamflow.training.runstatus import CACHE, DISK, NODE, RUN, SOFTWARE, write_failed_run

log = logging.getLogger(__name__)

# Attempts a training job gets (Snakemake's retries + 1), handed from the controller to jobs it
# starts in other processes (rules/common.smk)
ATTEMPTS_ENV = "PCAMFLOW_TRAIN_ATTEMPTS"
# Fault injection for tests and drills: comma-separated glob patterns; a run whose output directory
# matches one fails at its start as if it had crashed. Never set in normal use.
INJECT_ENV = "PCAMFLOW_INJECT_FAILURE"
# The same for a training process killed by SIGKILL (as by the OOM killer): the workflow's training
# child (pcamflow.training.job) of a matching run kills itself at its start. Never set in normal use.
INJECT_SIGNAL_ENV = "PCAMFLOW_INJECT_SIGNAL"


class InjectedFailure(RuntimeError):
    """The failure PCAMFLOW_INJECT_FAILURE asked for."""


def train_or_record_failure(
    run_config: dict,
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    *,
    attempt: int,
    attempts: int,
    live_dir: str | os.PathLike | None = None,
) -> dict | None:
    """Train the run; on its last attempt, a failure is recorded in its outputs instead of raised.

    Returns the training summary, or None for a run recorded as failed. Before the last attempt any
    failure (a preemption too) is raised, so the job fails and Snakemake retries it, and so is a stop
    the user asked for (stopped_by_user); the resume state in state_dir is kept either way, so a
    later retry continues from the last checkpoint.
    """
    from pcamflow.training.train import run_training  # torch: only in the process that trains

    try:
        check_injected_failure(out_dir)
        return run_training(run_config, out_dir, state_dir, live_dir=live_dir)
    except (Exception, Preempted) as exc:
        # a damaged store is no failure of the run: the job fails, the next invocation names the file
        if attempt < attempts or stopped_by_user(exc) or isinstance(exc, DataChanged):
            raise
        reason, category = failure_reason(exc), failure_category(exc)
        log.exception("attempt %d of %d failed; recording the run as failed: %s", attempt, attempts, reason)
        write_failed_run(out_dir, state_dir, run_config, reason, attempt, category)
        return None


def stopped_by_user(exc: BaseException) -> bool:
    """A checkpointed stop that must stay resumable rather than count as a failure: Ctrl-C, or a
    SIGTERM outside Slurm (Snakemake or the user stopping the run). Inside a Slurm job, SIGTERM on
    the last attempt is the time limit once more, and the run is recorded as failed."""
    if not isinstance(exc, Preempted):
        return False
    return str(exc).startswith("SIGINT") or not os.environ.get("SLURM_JOB_ID")


def failure_reason(exc: BaseException) -> str:
    """One line that says why a run failed: the exception's type and its first message line (a full
    disk: which file could not be written)."""
    return disk_full_line(exc) or f"{type(exc).__name__}: {first_line(exc)}"


# What a CUDA error says when the node or its GPU failed, not the run (NVIDIA Xid causes)
NODE_FAULTS = (
    "uncorrectable ECC error",
    "busy or unavailable",
    "no CUDA GPUs are available",
    "CUDA driver",
    "GPU is lost",
    "unknown error",
)


def failure_category(exc: BaseException) -> str:
    """RUN when the run itself failed (its settings or the code's answer to them: divergence, CUDA
    out of memory, a bug); else what did: DISK (full, quota, I/O error), SOFTWARE (a module
    missing or broken), CACHE (a damaged compiled-code cache or saved state: unpickling failed),
    NODE (the GPU or its driver)."""
    for cause in _chain(exc):
        if disk_full_line(cause) or (isinstance(cause, OSError) and cause.errno == errno.EIO):
            return DISK
        if isinstance(cause, ImportError):
            return SOFTWARE
        if isinstance(cause, pickle.UnpicklingError) or _raised_in(cause, "numba.core.caching"):
            return CACHE
        if "CUDA" in str(cause) and any(fault in str(cause) for fault in NODE_FAULTS):
            return NODE
    return RUN


def _chain(exc: BaseException | None):
    """exc and the exceptions it was raised from or during."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _raised_in(exc: BaseException, module: str) -> bool:
    """Whether exc passed through code of `module` (or a submodule) on its way up."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(module):
            return True
        tb = tb.tb_next
    return False


def injected(env: str, out_dir: str | os.PathLike) -> bool:
    """Whether the fault-injection variable `env` names the run in out_dir."""
    patterns = [p.strip() for p in os.environ.get(env, "").split(",") if p.strip()]
    return any(fnmatch.fnmatch(os.fspath(out_dir), pattern) for pattern in patterns)


def check_injected_failure(out_dir: str | os.PathLike) -> None:
    if injected(INJECT_ENV, out_dir):
        raise InjectedFailure(f"failure injected by {INJECT_ENV} for {out_dir}")


def check_injected_signal(out_dir: str | os.PathLike) -> None:
    if injected(INJECT_SIGNAL_ENV, out_dir):
        log.warning("SIGKILL injected by %s for %s", INJECT_SIGNAL_ENV, out_dir)
        os.kill(os.getpid(), signal.SIGKILL)
