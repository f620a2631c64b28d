"""What a run shows while it trains: a progress bar or log lines per step, one line per epoch, and
live TensorBoard events."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class StepMonitor:
    """A tqdm bar on a terminal; otherwise one log line every `log_every` steps (img/s, data time)."""

    def __init__(self, log_every: int, epochs: int, tty: bool | None = None):
        self.log_every = log_every
        self.epochs = epochs
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None

    def start_epoch(self, epoch: int, total: int, done: int) -> None:
        self.epoch, self.total = epoch, total
        self.window_start, self.window_images, self.window_data_s = time.perf_counter(), 0, 0.0
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch}/{self.epochs}", leave=False)

    def step(self, step_in_epoch: int, global_step: int, images: int, data_s: float, loss: float | None, lr):
        self.window_images += images
        self.window_data_s += data_s
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            return
        if global_step % self.log_every:
            return
        elapsed = time.perf_counter() - self.window_start
        log.info(
            "epoch %d/%d step %d/%d (global %d) loss %.4f lr %.3g | %.1f img/s, data %.1f%%",
            self.epoch,
            self.epochs,
            step_in_epoch,
            self.total,
            global_step,
            loss,
            lr,
            self.window_images / max(elapsed, 1e-9),
            100 * self.window_data_s / max(elapsed, 1e-9),
        )
        self.window_start, self.window_images, self.window_data_s = time.perf_counter(), 0, 0.0

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def log_epoch(row: dict, epochs: int) -> None:
    shown = ", ".join(
        f"{k} {row[k]:.4f}" if row[k] is not None else f"{k} n/a"
        for k in ("train_loss", "val_loss", "val_accuracy", "val_f2", "val_auc", "val_pr_auc")
    )
    log.info(
        "epoch %d/%d: %s (%.1f s, %.1f img/s)",
        row["epoch"],
        epochs,
        shown,
        row["epoch_time_s"],
        row["img_per_s"],
    )


class LiveEvents:
    """TensorBoard scalars written while the run trains, so `tensorboard --logdir` shows it live.

    The x-axis is the optimizer step: each logged step's loss, gradient norm and lr as it happens,
    and each epoch's metrics at the epoch's last step, flushed at once. A resumed run continues the
    same directory with a purge at the checkpoint's step + 1, so TensorBoard hides what the killed
    attempt wrote after its checkpoint and every step appears once; a run that starts afresh
    replaces the directory. (The run's `tensorboard/` output is written from its history at the end.)
    """

    def __init__(self, live_dir: str | os.PathLike, resumed_from: dict | None):
        from torch.utils.tensorboard import SummaryWriter

        live_dir = Path(live_dir)
        if resumed_from is None:
            shutil.rmtree(live_dir, ignore_errors=True)  # events of an abandoned earlier start
        purge = resumed_from["step"] + 1 if resumed_from else None
        self.writer = SummaryWriter(log_dir=str(live_dir), purge_step=purge, flush_secs=30)

    def step(self, row: dict) -> None:
        for key in ("train_loss_step", "grad_norm", "lr"):
            if row[key] is not None:
                self.writer.add_scalar(f"step/{key}", row[key], row["step"])
        self.writer.flush()

    def epoch(self, row: dict, step: int) -> None:
        for key, value in row.items():
            if value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.flush()

    def __enter__(self) -> LiveEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()
