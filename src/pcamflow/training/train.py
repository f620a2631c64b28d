"""The training engine: one run = one (grid point, seed), reproducible and resumable.

`run_training(run_config, out_dir, state_dir)` is the one entry point (the `train` rule and
`pcamflow train` call it). A run config is
    {data: <prepared store>, model, lr, batch_size, optimizer, seed, training: {...}}
(the grid keys at the top level, every other setting in the validated `training` block).

Resume: the full state (model, optimizer, scheduler, scaler, every RNG, the loader's position inside
the epoch, history so far) is checkpointed into `state_dir` at every epoch end, every
`checkpoint_minutes` and on SIGTERM/SIGUSR1/SIGINT; a run that finds it there continues from it and ends
bit-identical (on a CPU, timing fields aside) to an uninterrupted run. The learning-rate schedule is
stepped once per optimizer step (warm-up and cosine are smooth over steps; the step schedule decays
at epoch boundaries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pcamflow import metrics, provenance
from pcamflow.config import GRID_KEYS, load_schema, load_yaml, operational_keys, validate
from pcamflow.data.loader import BatchLoader, device_resident
from pcamflow.data.predictions import autocast, predict_logits
from pcamflow.data.staging import stage_prepared
from pcamflow.data.store import Split, load_split, load_stats, store_files, verify_store
from pcamflow.data.transforms import BatchTransform
from pcamflow.errors import EXIT_PREEMPTED, PcamflowError, Preempted, check_output_dir
from pcamflow.io import atomic_dir, atomic_path, now_iso, write_csv, write_json
from pcamflow.rundir import (
    BEST_CHECKPOINT,
    EPOCH_FIELDS,
    HISTORY,
    LAST_CHECKPOINT,
    METRICS,
    RUN_INFO,
    SCORED,
    TENSORBOARD,
    VAL_LOSS,
)
from pcamflow.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pcamflow.training.job import make_run_config, plain  # noqa: F401 - make_run_config: train's API too
from pcamflow.training.models import build_model

log = logging.getLogger("pcamflow.training.train")

# Training settings that do not change what is learned (schema.yaml `operational: true`): a
# checkpoint written under other values of these (another device, thread count or logging cadence)
# still resumes.
OPERATIONAL_KEYS = tuple(key.split(".", 1)[1] for key in operational_keys() if key.startswith("training."))


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run cannot continue."""


# ---------------------------------------------------------------- run config


def run_config_schema() -> dict:
    """JSON Schema of a run config, built from the workflow schema (one grid value per grid key)."""
    schema = load_schema()
    grid = schema["properties"]["grid"]["properties"]
    properties = {key: dict(sub["items"], description=sub["description"]) for key, sub in grid.items()}
    properties["data"] = {"type": "string", "description": "Prepared store directory."}
    properties["seed"] = dict(schema["properties"]["seeds"]["items"], description="Seed of the run.")
    properties["training"] = {"$ref": "#/$defs/training"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "seed", *GRID_KEYS],
        "properties": properties,
        "$defs": schema["$defs"],
    }


def validate_run_config(run_config: dict, source: str = "run config") -> dict:
    """The run config with training defaults filled in; one clear PcamflowError when it is wrong."""
    if not isinstance(run_config, dict):
        raise PcamflowError(f"{source}: expected a mapping of keys to values")
    cfg = validate(plain(run_config), run_config_schema(), source)
    for path in store_files(cfg["data"], ("train", "valid")):
        if not path.exists():
            raise PcamflowError(f"{source}: key 'data': {path} missing (run the prepare rule first)")
    return cfg


# ---------------------------------------------------------------- reproducibility and device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic algorithms and cuDNN (bit-identical twin runs on a CPU), or the fastest ones.

    Ops without a deterministic CUDA kernel warn instead of failing, so GPU runs still train.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    """'auto', 'cpu' or 'cuda' as a torch device; `key` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise PcamflowError(f"{key}: {name!r} is not a device; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise PcamflowError(f"{key}: cuda requested but no CUDA device is available here (use cpu)")
    return torch.device(name)


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise PcamflowError(
            f"training.amp: fp16 needs a CUDA device (training on {device.type}); use bf16 or none"
        )


def derived_seeds(seed: int, n: int) -> list[int]:
    """n independent seeds from one (loader order, augmentation), via numpy's SeedSequence."""
    return [int(s) for s in np.random.SeedSequence(seed % 2**63).generate_state(n, dtype=np.uint64) >> 1]


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: torch.nn.Module, name: str, lr: float, training: dict) -> torch.optim.Optimizer:
    params = model.parameters()
    wd = training["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        momentum = training["momentum"]
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=training["nesterov"] and momentum > 0, weight_decay=wd
        )
    raise PcamflowError(f"optimizer '{name}': unknown (choose one of adam, adamw, sgd)")


def lr_factor(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: int,
    step_size: int,
    gamma: float,
) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, training: dict, steps_per_epoch: int):
    """A LambdaLR stepped once per optimizer step (warm-up given in epochs, may be fractional)."""
    settings = {
        "schedule": training["scheduler"],
        "total_steps": training["epochs"] * steps_per_epoch,
        "warmup_steps": round(training["warmup_epochs"] * steps_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "step_size": training["step_size"],
        "gamma": training["gamma"],
    }

    def factor(step: int) -> float:  # a plain function: LambdaLR keeps it out of its state_dict
        return lr_factor(step, **settings)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def global_grad_norm(parameters) -> torch.Tensor:
    """L2 norm of all gradients together, as a device tensor (no host sync per parameter)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


# ---------------------------------------------------------------- one run's moving parts


@dataclasses.dataclass
class StepParts:
    """What one optimizer step (`train_step`) uses: a run holds them, and the throughput bench
    builds them alone to time training steps."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    device: torch.device
    amp: str  # training.amp
    grad_clip: float  # training.grad_clip; 0 is off


def build_step_parts(
    model: torch.nn.Module,
    settings: dict,
    *,
    device: torch.device,
    optimizer: str,
    lr: float,
    steps_per_epoch: int,
) -> StepParts:
    """The optimizer, learning-rate schedule and loss scaler of `model` (already on `device`) for
    the training `settings`."""
    built = build_optimizer(model, optimizer, lr, settings)
    return StepParts(
        model=model,
        optimizer=built,
        scheduler=build_scheduler(built, settings, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda") if settings["amp"] == "fp16" else None,
        device=device,
        amp=settings["amp"],
        grad_clip=settings["grad_clip"],
    )


@dataclasses.dataclass
class Run:
    """Everything a run trains with (built once; restored from a checkpoint on resume)."""

    cfg: dict
    settings: dict
    parts: StepParts  # model, optimizer, schedule, scaler
    loader: BatchLoader
    transform: BatchTransform
    augment_rng: torch.Generator
    valid: Split
    stats: dict
    state_dir: Path
    data_checksum: str

    @property
    def device(self) -> torch.device:
        return self.parts.device


@dataclasses.dataclass
class Progress:
    """Where the run is: completed epochs, optimizer steps, history, best metric, in-epoch sums."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    epochs: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    loss_sum: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    seen: int = 0  # training images so far in the current epoch
    epoch_train_s: float = 0.0  # training wall time so far in the current epoch
    train_time_s: float = 0.0  # all attempts together
    start_time: str = ""
    resumed_from: dict | None = None


def build_run(cfg: dict, state_dir: Path) -> Run:
    settings = cfg["training"]
    device = resolve_device(settings["device"])
    check_amp(settings["amp"], device)
    configure_determinism(settings["deterministic"])
    seed_everything(cfg["seed"])
    # on a Slurm node with scratch, read a node-local copy; cfg keeps the shared path (run.json, resume)
    data = stage_prepared(cfg["data"])
    data_checksum = verify_store(data, ("train", "valid"))  # what this job reads, once per job
    train_split, valid = load_split(data, "train"), load_split(data, "valid")
    stats = load_stats(data)
    model = build_model(cfg["model"], settings).to(device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loader_seed, augment_seed = derived_seeds(cfg["seed"], 2)
    resident = device_resident(settings["device_resident"], train_split, device)
    loader = BatchLoader(
        train_split,
        cfg["batch_size"],
        seed=loader_seed,
        balanced=settings["sampler"] == "balanced",
        device=device,
        resident=resident,
    )
    return Run(
        cfg=cfg,
        settings=settings,
        parts=build_step_parts(
            model,
            settings,
            device=device,
            optimizer=cfg["optimizer"],
            lr=cfg["lr"],
            steps_per_epoch=len(loader),
        ),
        loader=loader,
        transform=BatchTransform(
            stats,
            device=device,
            augment=settings["augment"],
            color_jitter=settings["color_jitter"],
            channels_last=settings["channels_last"],
            cpu_accelerator=settings["cpu_accelerator"],
        ),
        augment_rng=torch.Generator().manual_seed(augment_seed),
        valid=valid,
        stats=stats,
        state_dir=state_dir,
        data_checksum=data_checksum,
    )


# ---------------------------------------------------------------- checkpoints of the run


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


# ---------------------------------------------------------------- signals


class StopRequest:
    """Set by SIGTERM/SIGUSR1 (Slurm's warning before a time limit or preemption) and by SIGINT
    (Ctrl-C, in a terminal or of a local workflow): each checkpoints, then stops. A second Ctrl-C
    stops at once, without waiting for the checkpoint."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        # only set a flag here: the loop checkpoints at the next step boundary and stops
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: checkpointing at the next step, then stopping (Ctrl-C again to stop now)")
        self.signal_name = signal.Signals(signum).name

    def stopping(self, where: str) -> Preempted:
        """Log the stop and return the exception to raise once the checkpoint is written."""
        log.warning(
            "%s received: checkpointed %s; exiting %d so a retry resumes",
            self.signal_name,
            where,
            EXIT_PREEMPTED,
        )
        return Preempted(f"{self.signal_name}: checkpointed {where}; run again to resume")


# ---------------------------------------------------------------- progress display


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


# ---------------------------------------------------------------- training and evaluation


def train_step(parts: StepParts, inputs: torch.Tensor, y: torch.Tensor, measure_norm: bool):
    """One optimizer step on a batch of model inputs (`BatchTransform.to_input`'s output); returns
    (loss, global grad norm before clipping or None) as device tensors."""
    with autocast(parts.device, parts.amp):
        logits = parts.model(inputs)
    loss = F.cross_entropy(logits.float(), y)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler:
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)
    else:
        loss.backward()
    norm = None
    if parts.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.grad_clip, foreach=True)
    elif measure_norm:
        norm = global_grad_norm(parts.model.parameters())
    if parts.scaler:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()
    parts.scheduler.step()
    return loss.detach(), norm


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


# ---------------------------------------------------------------- the run


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


# ---------------------------------------------------------------- outputs


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


# ---------------------------------------------------------------- entry points


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
    check_output_dir(args.out)  # before an epoch is trained, not after it
    if getattr(args, "state_dir", None):
        check_output_dir(args.state_dir, "--state-dir")
    run_config = load_yaml(args.config)
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
