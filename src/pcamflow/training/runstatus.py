"""Whether a training run succeeded, and what a run that failed for good leaves behind.

The contract (shared with `pcamflow status`): a run's `run.json` holds `"status": "done"`, or
`"status": "failed"` with `"failure": {"reason": <one line>, "attempts": <int>, "category": <what
failed>}`; a run.json without `status` (older runs) counts as done, a failure without `category`
as the run's own. The category is `run` when the run itself failed (its settings, or the code's
answer to them), else what did instead, so nobody blames the run's settings and a retry is worth it
once that is fixed: `disk`, `software`, `cache`, `node`. A run that fails on its last attempt (Snakemake's `retries`
plus one) still writes every declared output, marked failed, so the summaries, the champion, the
evaluation and the report are built from the runs that succeeded instead of the whole sweep
stopping. Earlier attempts fail as usual, so Snakemake retries them first (the attempt's logic:
pcamflow.training.attempt).

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

import os
from pathlib import Path

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

DONE, FAILED = "done", "failed"
# What failed (failure["category"]): the run, or something that is not the run's own
RUN, DISK, SOFTWARE, CACHE, NODE = "run", "disk", "software", "cache", "node"
NOT_THE_RUNS_OWN = {
    DISK: "a full or failing disk",
    SOFTWARE: "a missing or broken module",
    CACHE: "a damaged cache or saved state",
    NODE: "the node or its GPU",
}


def failure_category(failure: dict | None) -> str:
    """The category of a recorded failure (RUN for records made before categories)."""
    return (failure or {}).get("category") or RUN


def describe_failure(failure: dict | None) -> str:
    """A recorded failure's reason, led by what failed when it was not the run itself."""
    failure = failure or {}
    reason = failure.get("reason") or "no reason recorded"
    category = failure_category(failure)
    if category == RUN:
        return reason
    return f"not the run's own ({category}: {NOT_THE_RUNS_OWN.get(category, category)}); retry it once fixed: {reason}"


def run_status(run_dir: str | os.PathLike) -> dict:
    """{"status": "done" | "failed", "failure": {...} or None} from a run's run.json."""
    path = Path(run_dir) / RUN_INFO
    info = read_json(path) if path.exists() else {}
    status = info.get("status", DONE)
    return {"status": status, "failure": info.get("failure") if status == FAILED else None}


def write_failed_run(
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    run_config: dict,
    reason: str,
    attempts: int,
    category: str = RUN,
) -> None:
    """Every declared output of a training run, marked failed: run.json with the reason, the history
    and metrics of the epochs it finished (none when it never got through one), and checkpoint files
    that hold the failure instead of weights (loading one says so)."""
    from pcamflow.training.checkpoint import save_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failure = {"reason": reason, "attempts": int(attempts), "category": category}
    progress = _saved_progress(Path(state_dir) / LAST_CHECKPOINT)
    epochs, steps = progress.get("epochs", []), progress.get("steps", [])
    selection = run_config.get("training", {}).get("selection_metric", "val_auc")
    # the keys of outputs.history_record, with no best epoch
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
