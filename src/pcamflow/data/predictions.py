"""Predictions: the one place a model's outputs on uint8 tiles are made (validation in training,
evaluation and slices call it; the exported model traces the same transform)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pcamflow.data.transforms import D4_SIZE, BatchTransform, apply_d4


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    x_uint8_array,
    transform: BatchTransform,
    *,
    batch_size: int = 256,
    amp: str = "none",
    d4: int = 0,
) -> Iterator[torch.Tensor]:
    """Logits of consecutive batches (in order, eval mode, no augmentation); `d4` picks one D4 view."""
    model.eval()
    device = transform.device
    for start in range(0, len(x_uint8_array), batch_size):
        batch = torch.from_numpy(np.array(x_uint8_array[start : start + batch_size]))  # a writable copy
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        if d4:
            batch = apply_d4(batch, d4)
        with autocast(device, amp):
            logits = model(transform.to_input(batch, train=False))
        yield logits.float()


def predict_proba(
    model: torch.nn.Module,
    x_uint8_array,
    stats: dict,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    tta: bool = False,
    plain: np.ndarray | None = None,
    cpu_accelerator: str | bool = "auto",
) -> np.ndarray:
    """P(positive) for every tile of a uint8 (N, 96, 96, 3) array, in order; tta averages the 8 D4 views.
    `plain`: the caller's tta=False result of this model on these tiles, used as view 0 (one pass less)."""
    transform = BatchTransform(stats, device=device, augment=False, cpu_accelerator=cpu_accelerator)

    def view_proba(view: int) -> torch.Tensor:
        if view == 0 and plain is not None:
            return torch.from_numpy(np.asarray(plain, dtype=np.float64))
        logits = predict_logits(model, x_uint8_array, transform, batch_size=batch_size, d4=view)
        chunks = [torch.softmax(batch, dim=1)[:, 1].cpu() for batch in logits]
        return torch.cat(chunks).double() if chunks else torch.zeros(0, dtype=torch.float64)

    views = range(D4_SIZE) if tta else (0,)
    return (sum(map(view_proba, views)) / len(views)).numpy()


def autocast(device: torch.device, amp: str):
    """The autocast context of `amp` ('none', 'bf16', 'fp16') on this device."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
