"""A finished run's outputs: history.json, metrics.csv, the checkpoints, run.json, tensorboard/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from pcamflow import provenance
from pcamflow.io import atomic_dir, atomic_path, now_iso, write_csv, write_json
from pcamflow.rundir import (
    BEST_CHECKPOINT,
    EPOCH_FIELDS,
    HISTORY,
    LAST_CHECKPOINT,
    METRICS,
    RUN_INFO,
    TENSORBOARD,
)
from pcamflow.training.run import Progress, Run


def history_record(progress: Progress, selection: str) -> dict:
    return {
        "selection_metric": selection,
        "best_epoch": progress.best_epoch,
        "epochs": progress.epochs,
        "steps": progress.steps,
    }


def write_outputs(run: Run, progress: Progress, out_dir: Path) -> None:
    """history.json, metrics.csv, the two checkpoints, run.json and tensorboard/ in out_dir."""
    selection = run.settings["selection_metric"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(run.state_dir / name, tmp)
    write_json(out_dir / HISTORY, history_record(progress, selection))
    write_csv(out_dir / METRICS, pd.DataFrame(progress.epochs, columns=list(EPOCH_FIELDS)))
    write_tensorboard(out_dir / TENSORBOARD, run.cfg, progress, selection)
    write_json(
        out_dir / RUN_INFO,
        {
            "status": "done",  # pcamflow.training.runstatus: a run that failed for good says "failed"
            "run_config": run.cfg,
            "seed": run.cfg["seed"],
            **provenance.host_record(run.device),
            "data_checksum": run.data_checksum,
            "start_time": progress.start_time,
            "end_time": now_iso(),
            "train_time_s": progress.train_time_s,
            "resumed_from": progress.resumed_from,
        },
    )


def write_tensorboard(path: Path, cfg: dict, progress: Progress, selection: str) -> None:
    """Scalars per epoch and per recorded step, and HParams (grid values -> best-epoch metrics).

    Written from the history at the end (into a temporary directory, then renamed), so a resumed
    run's event files hold each step once.
    """
    from torch.utils.tensorboard import SummaryWriter

    with atomic_dir(path) as tmp, SummaryWriter(log_dir=str(tmp)) as writer:
        for row in progress.epochs:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        for row in progress.steps:
            for key in ("train_loss_step", "grad_norm", "lr"):
                if row[key] is not None:
                    writer.add_scalar(f"step/{key}", row[key], row["step"])
        best = next((r for r in progress.epochs if r["epoch"] == progress.best_epoch), None) or {}
        hparams = {k: v for k, v in cfg.items() if k not in ("data", "training")}
        scores = {f"best/{k}": v for k, v in best.items() if k.startswith("val_") and v is not None}
        if scores:
            writer.add_hparams(hparams, scores, run_name=".")
