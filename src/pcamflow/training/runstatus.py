"""Whether a training run succeeded, and what a run that failed for good leaves behind.

The contract (shared with `pcamflow status`): a run's `run.json` holds `"status": "done"`, or
`"status": "failed"` with `"failure": {"reason": <one line>, "attempts": <int>}`; a run.json without
`status` (older runs) counts as done. A run that fails on its last attempt (Snakemake's `retries`
plus one) still writes every declared output, marked failed, so the summaries, the champion, the
evaluation and the report are built from the runs that succeeded instead of the whole sweep
stopping. Earlier attempts fail as usual, so Snakemake retries them first.

What is covered: an exception in training (divergence, CUDA out of memory, a bug), a SIGTERM at a
Slurm time limit (Preempted), and, in the workflow, a training process killed by a signal (the OOM
killer's SIGKILL, SIGSEGV/SIGBUS in native code, kill -9): the rule's script trains in a child
process (pcamflow.training.job) and records that case itself, with write_failed_run as here. Not
covered: a job whose supervisor dies too (the node fails, the whole job is killed): nothing can
write a record, so Snakemake's attempts retry it (resuming from the state dir) and, after the
last, the job fails; `pcamflow status` then shows the run as interrupted (started, no run.json),
and the next invocation resumes it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal
from pathlib import Path

from pcamflow.errors import Preempted, first_line
from pcamflow.io import atomic_dir, read_json, write_csv, write_json
from pcamflow.rundir import (
    BEST_CHECKPOINT,
    EPOCH_FIELDS,
    HISTORY,
    LAST_CHECKPOINT,
    METRICS,
    RUN_INFO,
    TENSORBOARD,
)

log = logging.getLogger(__name__)

DONE, FAILED = "done", "failed"
# Attempts a training job gets (Snakemake's retries + 1), handed from the controller to jobs it
# starts in other processes (rules/train.smk)
ATTEMPTS_ENV = "PCAMFLOW_TRAIN_ATTEMPTS"
# Fault injection for tests and drills: comma-separated glob patterns; a run whose output directory
# matches one fails at its start as if it had crashed. Never set in normal use.
INJECT_ENV = "PCAMFLOW_INJECT_FAILURE"
# The same for a training process killed by SIGKILL (as by the OOM killer): the workflow's training
# child (pcamflow.training.job) of a matching run kills itself at its start. Never set in normal use.
INJECT_SIGNAL_ENV = "PCAMFLOW_INJECT_SIGNAL"


class InjectedFailure(RuntimeError):
    """The failure PCAMFLOW_INJECT_FAILURE asked for."""


def run_status(run_dir: str | os.PathLike) -> dict:
    """{"status": "done" | "failed", "failure": {...} or None} from a run's run.json."""
    path = Path(run_dir) / RUN_INFO
    info = read_json(path) if path.exists() else {}
    status = info.get("status", DONE)
    return {"status": status, "failure": info.get("failure") if status == FAILED else None}


def is_failed(run_dir: str | os.PathLike) -> bool:
    return run_status(run_dir)["status"] == FAILED


def failure_reason(exc: BaseException) -> str:
    """One line that says why a run failed: the exception's type and its first message line."""
    return f"{type(exc).__name__}: {first_line(exc)}"


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
    from pcamflow.training.train import run_training

    try:
        check_injected_failure(out_dir)
        return run_training(run_config, out_dir, state_dir, live_dir=live_dir)
    except (Exception, Preempted) as exc:
        if attempt < attempts or stopped_by_user(exc):
            raise
        reason = failure_reason(exc)
        log.exception("attempt %d of %d failed; recording the run as failed: %s", attempt, attempts, reason)
        write_failed_run(out_dir, state_dir, run_config, reason, attempt)
        return None


def stopped_by_user(exc: BaseException) -> bool:
    """A checkpointed stop that must stay resumable rather than count as a failure: Ctrl-C, or a
    SIGTERM outside Slurm (Snakemake or the user stopping the run). Inside a Slurm job, SIGTERM on
    the last attempt is the time limit once more, and the run is recorded as failed."""
    if not isinstance(exc, Preempted):
        return False
    return str(exc).startswith("SIGINT") or not os.environ.get("SLURM_JOB_ID")


def write_failed_run(
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    run_config: dict,
    reason: str,
    attempts: int,
) -> None:
    """Every declared output of a training run, marked failed: run.json with the reason, the history
    and metrics of the epochs it finished (none when it never got through one), and checkpoint files
    that hold the failure instead of weights (loading one says so)."""
    from pcamflow.training.checkpoint import save_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failure = {"reason": reason, "attempts": int(attempts)}
    progress = _saved_progress(Path(state_dir) / LAST_CHECKPOINT)
    epochs, steps = progress.get("epochs", []), progress.get("steps", [])
    selection = run_config.get("training", {}).get("selection_metric", "val_auc")
    # the keys of train.history_record, with no best epoch
    history = {"selection_metric": selection, "best_epoch": None, "epochs": epochs, "steps": steps}
    write_json(out_dir / HISTORY, {**history, "status": FAILED})
    import pandas as pd

    write_csv(out_dir / METRICS, pd.DataFrame(epochs, columns=list(EPOCH_FIELDS)))
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        save_checkpoint(out_dir / name, {"failed": failure})
    with atomic_dir(out_dir / TENSORBOARD):
        pass  # declared output; the live events of the attempts stay in the live directory
    write_json(
        out_dir / RUN_INFO,
        {
            "status": FAILED,
            "failure": failure,
            "run_config": run_config,
            "seed": run_config.get("seed"),
            "epochs_done": len(epochs),
            "steps_done": progress.get("step", 0),
        },
    )


def _saved_progress(path: Path) -> dict:
    """epochs, steps and step of the resume checkpoint, or {} when there is none (or it is unreadable)."""
    if not path.exists():
        return {}
    from pcamflow.training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - a damaged state must not stop the failure from being recorded
        return {}
    progress = state.get("progress", {})
    return {
        "epochs": progress.get("epochs", []),
        "steps": progress.get("steps", []),
        "step": state.get("step", 0),
    }
