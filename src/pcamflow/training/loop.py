"""The training loop: epochs of optimizer steps, validation after each, checkpoints on the way.

`fit` trains one validated run config (pcamflow.training.runconfig) and writes its outputs; it
resumes from the run's state directory when a compatible checkpoint is there
(pcamflow.training.resume) and stops, checkpointed, when a signal asks it to
(pcamflow.training.stop).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pcamflow import metrics, provenance
from pcamflow.data.predictions import predict_logits
from pcamflow.data.transforms import BatchTransform
from pcamflow.errors import PcamflowError
from pcamflow.rundir import BEST_CHECKPOINT, SCORED, VAL_LOSS
from pcamflow.training.checkpoint import save_checkpoint
from pcamflow.training.outputs import write_outputs
from pcamflow.training.progress import LiveEvents, StepMonitor, log_epoch
from pcamflow.training.resume import best_state, clear_state, load_resume_state, save_resume_state
from pcamflow.training.run import Progress, Run, build_run
from pcamflow.training.step import train_step
from pcamflow.training.stop import StopRequest

log = logging.getLogger(__name__)


class TrainingDiverged(PcamflowError):
    """The training loss became NaN or infinite: the run cannot continue. An outcome of the run's
    settings, said plainly (one line), not an unexpected error."""


def train_one_epoch(
    run: Run, progress: Progress, monitor: StepMonitor, stop: StopRequest, live: LiveEvents | None = None
) -> dict:
    """Train the rest of the current epoch (all of it unless resumed mid-epoch); checkpoint on the way."""
    settings = run.settings
    epoch = progress.epoch + 1
    run.parts.model.train()
    monitor.start_epoch(epoch, len(run.loader), run.loader.position)
    last_checkpoint = time.monotonic()
    lr = run.parts.optimizer.param_groups[0]["lr"]
    tick = time.perf_counter()
    batches = iter(run.loader)
    while True:
        fetch = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        x, y = batch
        data_s = time.perf_counter() - fetch
        lr = run.parts.optimizer.param_groups[0]["lr"]
        step = progress.step + 1
        measure = step % settings["grad_norm_every"] == 0
        inputs = run.transform.to_input(x, train=True, generator=run.augment_rng)
        loss, norm = train_step(run.parts, inputs, y, measure)
        progress.step = step
        progress.loss_sum += loss.double() * len(y)
        progress.seen += len(y)
        loss_value = None
        if step % settings["log_every"] == 0 or measure:
            loss_value = loss.item()  # the host sync happens on logged steps only
            check_finite(loss_value, f"at step {step} (epoch {epoch})")
            progress.steps.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "train_loss_step": loss_value,
                    "grad_norm": _finite_or_none(norm) if measure else None,
                    "lr": lr,
                }
            )
            if live:
                live.step(progress.steps[-1])
        monitor.step(run.loader.position, step, len(y), data_s, loss_value, lr)
        now = time.perf_counter()
        progress.epoch_train_s += now - tick
        progress.train_time_s += now - tick
        tick = now
        why = _checkpoint_due(settings, step, last_checkpoint, stop)
        if why and run.loader.position < len(run.loader):  # the epoch end writes its own checkpoint
            save_resume_state(run, progress, why)
            last_checkpoint = time.monotonic()
            tick = time.perf_counter()
            if stop:
                raise stop.stopping(f"at step {step}")
    monitor.end_epoch()
    train_loss = (progress.loss_sum / max(progress.seen, 1)).item()
    check_finite(train_loss, f"over epoch {epoch}")
    record = {
        "train_loss": train_loss,
        "lr": lr,
        "train_s": progress.epoch_train_s,
        "img_per_s": progress.seen / max(progress.epoch_train_s, 1e-9),
    }
    progress.loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    progress.seen, progress.epoch_train_s = 0, 0.0
    return record


def check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training loss is {loss} {where}: the run diverged (lower the lr or set training.grad_clip)"
        )


def _checkpoint_due(settings: dict, step: int, last_checkpoint: float, stop: StopRequest) -> str | None:
    if stop:
        return stop.signal_name
    every = settings["checkpoint_every_steps"]
    if every and step % every == 0:
        return f"every {every} steps"
    if time.monotonic() - last_checkpoint >= 60 * settings["checkpoint_minutes"]:
        return f"every {settings['checkpoint_minutes']} min"
    return None


def _finite_or_none(value: torch.Tensor | None) -> float | None:
    if value is None:
        return None
    value = float(value.item())
    return value if math.isfinite(value) else None


@torch.no_grad()
def validation_scores(
    model: torch.nn.Module,
    split,
    stats: dict,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    amp: str = "none",
    channels_last: bool = False,
    cpu_accelerator: str | bool = "auto",
) -> dict:
    """val_loss (mean cross-entropy) and val_accuracy, val_f2, val_auc, val_pr_auc on a split."""
    transform = BatchTransform(
        stats, device=device, augment=False, channels_last=channels_last, cpu_accelerator=cpu_accelerator
    )
    y = torch.from_numpy(np.asarray(split.y, dtype=np.int64))
    loss_sum = torch.zeros((), dtype=torch.float64, device=transform.device)
    probs, start = [], 0
    for logits in predict_logits(model, split.x, transform, batch_size=batch_size, amp=amp):
        labels = y[start : start + len(logits)].to(transform.device)
        start += len(logits)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu())
    prob = torch.cat(probs).double().numpy()
    scores = metrics.binary_metrics(split.y, prob)
    return {
        VAL_LOSS: (loss_sum / max(len(y), 1)).item(),
        **{metric.name: scores[metric.score] for metric in SCORED},
    }


def fit(
    run_config: dict,
    out_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    live_dir: str | os.PathLike | None = None,
) -> dict:
    """Train one validated run config; write its outputs into out_dir; return a short summary.

    With live_dir, TensorBoard scalars are written there while it trains (LiveEvents)."""
    out_dir, state_dir = Path(out_dir), Path(state_dir)
    run = build_run(run_config, state_dir)
    settings = run.settings
    progress = load_resume_state(run)
    progress.loss_sum = progress.loss_sum.to(run.device)
    selection = settings["selection_metric"]
    monitor = StepMonitor(settings["log_every"], settings["epochs"])
    stop = StopRequest()
    live = LiveEvents(live_dir, progress.resumed_from) if live_dir else None
    log.info(
        "training %s on %s (%s): %d train / %d valid tiles, %d steps per epoch, %d epochs",
        run.cfg["model"],
        run.device,
        provenance.device_name(run.device),
        len(run.loader.y),
        len(run.valid),
        len(run.loader),
        settings["epochs"],
    )
    with stop.installed(), live or contextlib.nullcontext():
        while progress.epoch < settings["epochs"]:
            record = train_one_epoch(run, progress, monitor, stop, live)
            started = time.perf_counter()
            scores = validation_scores(
                run.parts.model,
                run.valid,
                run.stats,
                device=run.device,
                batch_size=settings["eval_batch_size"],
                amp=settings["amp"],
                channels_last=settings["channels_last"],
                cpu_accelerator=settings["cpu_accelerator"],
            )
            progress.train_time_s += time.perf_counter() - started
            progress.epoch += 1
            progress.epochs.append(
                {
                    "epoch": progress.epoch,
                    "train_loss": record["train_loss"],
                    **scores,
                    "lr": record["lr"],
                    "epoch_time_s": record["train_s"] + time.perf_counter() - started,
                    "img_per_s": record["img_per_s"],
                }
            )
            log_epoch(progress.epochs[-1], settings["epochs"])
            if live:  # before the epoch-end checkpoint: a resume from it never writes this epoch again
                live.epoch(progress.epochs[-1], progress.step)
            # the first epoch is the best so far even when its metric is undefined (one-class valid)
            if progress.best_epoch is None or metrics.is_better(
                scores[selection], progress.best_value, selection
            ):
                progress.best_value, progress.best_epoch = scores[selection], progress.epoch
                save_checkpoint(state_dir / BEST_CHECKPOINT, best_state(run, progress, scores))
            save_resume_state(run, progress, "epoch end")
            if stop:
                raise stop.stopping(f"after epoch {progress.epoch}")
        # still under the handler: a late SIGTERM must not kill the run between writing its outputs
        # and clearing its resume state (training is done; the request is moot)
        write_outputs(run, progress, out_dir)
        clear_state(state_dir)
    return {
        "out_dir": str(out_dir),
        "selection_metric": selection,
        "best_epoch": progress.best_epoch,
        "best_value": progress.best_value,
        "last": progress.epochs[-1],
        "train_time_s": progress.train_time_s,
    }
