"""A run's checkpoints: the resume state it continues from, and the best epoch's weights.

The full state (model, optimizer, scheduler, scaler, every RNG, the loader's position inside the
epoch, history so far) is checkpointed into the state directory at every epoch end, every
`checkpoint_minutes` and on SIGTERM/SIGUSR1/SIGINT; a run that finds it there continues from it and
ends bit-identical (on a CPU, timing fields aside) to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

from pcamflow.errors import PcamflowError
from pcamflow.io import now_iso
from pcamflow.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT
from pcamflow.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pcamflow.training.run import Progress, Run
from pcamflow.training.runconfig import OPERATIONAL_KEYS

log = logging.getLogger(__name__)


def full_state(run: Run, progress: Progress) -> dict:
    return {
        "model": run.parts.model.state_dict(),
        "optimizer": run.parts.optimizer.state_dict(),
        "scheduler": run.parts.scheduler.state_dict(),
        "scaler": run.parts.scaler.state_dict() if run.parts.scaler else {},
        "epoch": progress.epoch,
        "step": progress.step,
        "loader": run.loader.state_dict(),
        "rng": capture_rng_state(),
        "augment_rng": run.augment_rng.get_state(),
        "run_config": run.cfg,
        "data_checksum": run.data_checksum,
        "progress": {
            **{k: v for k, v in dataclasses.asdict(progress).items() if k not in ("epoch", "step")},
            "loss_sum": progress.loss_sum.detach().cpu(),
        },
    }


def save_resume_state(run: Run, progress: Progress, why: str) -> None:
    path = run.state_dir / LAST_CHECKPOINT
    save_checkpoint(path, full_state(run, progress))
    log.info("checkpoint (%s): %d epochs done, step %d -> %s", why, progress.epoch, progress.step, path)


def restore(run: Run, state: dict) -> Progress:
    run.parts.model.load_state_dict(state["model"])
    run.parts.optimizer.load_state_dict(state["optimizer"])
    run.parts.scheduler.load_state_dict(state["scheduler"])
    if run.parts.scaler and state["scaler"]:
        run.parts.scaler.load_state_dict(state["scaler"])
    run.loader.load_state_dict(state["loader"])
    run.augment_rng.set_state(state["augment_rng"])
    restore_rng_state(state["rng"])
    return Progress(epoch=state["epoch"], step=state["step"], **state["progress"])


def resumable(state: dict, run: Run) -> str | None:
    """Why the checkpoint cannot continue this run (another config or data), or None."""

    def essence(cfg: dict) -> dict:
        cfg = {k: v for k, v in cfg.items() if k != "data"}
        cfg["training"] = {k: v for k, v in cfg["training"].items() if k not in OPERATIONAL_KEYS}
        return cfg

    if state.get("data_checksum") != run.data_checksum:
        return "the prepared data changed"
    if essence(state["run_config"]) != essence(run.cfg):
        return "the run config changed"
    return None


def load_resume_state(run: Run) -> Progress:
    """Continue from state_dir's checkpoint when there is a compatible one; else a fresh Progress."""
    path = run.state_dir / LAST_CHECKPOINT
    if not path.exists():
        return Progress(start_time=now_iso())
    try:
        state = load_checkpoint(path, map_location="cpu")
    except PcamflowError as err:  # else every retry of the run fails the same way, for good
        raise PcamflowError(
            f"{err}; it is this run's resume state: delete {path} to restart this run from its first epoch"
        ) from None
    why_not = resumable(state, run)
    if why_not:
        log.warning("not resuming from %s: %s; starting afresh", path, why_not)
        clear_state(run.state_dir)
        return Progress(start_time=now_iso())
    progress = restore(run, state)
    # the 1-based epoch it continues in, after `step` optimizer steps
    progress.resumed_from = {"epoch": progress.epoch + 1, "step": progress.step}
    log.info("resuming from %s: %d epochs done, step %d", path, progress.epoch, progress.step)
    return progress


def clear_state(state_dir: Path) -> None:
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        (state_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state_dir.rmdir()


def best_state(run: Run, progress: Progress, scores: dict) -> dict:
    """What checkpoint_best.pt holds: the weights and what they are (enough for load_model)."""
    return {
        "model": run.parts.model.state_dict(),
        "run_config": run.cfg,
        "epoch": progress.epoch,
        "step": progress.step,
        "metrics": scores,
        "data_checksum": run.data_checksum,
    }
