"""The entry points of training: `run_training` (the `train` rule's job and `pcamflow train` call it)
and the `pcamflow train` command.

One run = one (grid point, seed), reproducible and resumable. The parts: the run config
(runconfig), the device and seeds (device), one optimizer step (step), the run's moving parts
(run), the loop (loop), its checkpoints and resume (resume), stop requests (stop), progress and
live events (progress) and the run's outputs (outputs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pcamflow import rundir
from pcamflow.config import load_yaml
from pcamflow.errors import Preempted, check_output_dir, refuse_to_replace
from pcamflow.training.loop import fit
from pcamflow.training.runconfig import validate_run_config

log = logging.getLogger(__name__)


def run_training(
    run_config: dict,
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike | None = None,
    live_dir: str | os.PathLike | None = None,
) -> dict:
    """Validate a run config and train it (resuming from state_dir, default out_dir/state; live
    TensorBoard scalars in live_dir when given)."""
    cfg = validate_run_config(run_config)
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir / "state"
    torch.set_num_threads(cfg["training"]["threads"])
    return fit(cfg, out_dir, state_dir, live_dir)


def cli_main(args) -> int:
    """`pcamflow train --config RUN.yaml --out DIR [--state-dir DIR] [--live-dir DIR]`."""
    run_config = load_yaml(args.config)
    store = [run_config["data"]] if isinstance(run_config.get("data"), str) else []
    # before an epoch is trained, not after it; never inside the store it reads
    for option in ("--out", "--state-dir", "--live-dir"):
        folder = getattr(args, option[2:].replace("-", "_"), None)
        if folder:
            check_output_dir(folder, option, inputs=store)
    if not args.overwrite:  # a finished run is never trained again by accident
        refuse_to_replace(args.out, rundir.RUN_FILES, "files of a finished run", "pcamflow train --overwrite")
    try:
        summary = run_training(
            run_config, args.out, getattr(args, "state_dir", None), getattr(args, "live_dir", None)
        )
    except Preempted as stop:
        log.warning("pcamflow train: %s", stop)
        return stop.exit_code
    best = summary["best_value"]
    log.info(
        "done: best %s %s at epoch %s -> %s",
        summary["selection_metric"],
        "n/a" if best is None else f"{best:.4f}",
        summary["best_epoch"],
        summary["out_dir"],
    )
    return 0
