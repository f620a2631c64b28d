"""One optimizer step and what it uses: the optimizer, the learning-rate schedule, the loss scaler.

The learning-rate schedule is stepped once per optimizer step (warm-up and cosine are smooth over
steps; the step schedule decays at epoch boundaries). A run builds these parts once; the throughput
bench builds them alone to time training steps.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from pcamflow.data.predictions import autocast
from pcamflow.errors import PcamflowError


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
