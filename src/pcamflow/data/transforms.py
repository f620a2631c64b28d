"""The input transform in torch ops, one small function per operation (as torchvision's and timm's):
the reference, run on CUDA, in the exported model (`torch.export` traces `BatchTransform`) and on a
CPU when the compiled pass (`cpu_accelerator`, bit for bit the same values) is off or cannot run.

D4 is the group of the 8 symmetries of a square tile: element t flips the columns when t >= 4, then
rotates by 90 degrees t % 4 times. Training draws one element per tile, and optional colour jitter,
from the caller's CPU generator (part of the checkpointed state): the same augmentation on any device.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from pcamflow.constants import CHANNELS
from pcamflow.errors import first_line

log = logging.getLogger(__name__)

D4_SIZE = 8  # 4 rotations x {identity, flip}
NHWC_ROWS_COLUMNS, NCHW_ROWS_COLUMNS = (1, 2), (2, 3)  # a tile's row and column axes
# training.cpu_accelerator: on where it can run, or off (YAML reads a bare `off` as false)
CPU_ACCELERATOR_SETTINGS = ("auto", "off", False)


def d4_view(x: torch.Tensor, t: int, dims: tuple[int, int] = NHWC_ROWS_COLUMNS) -> torch.Tensor:
    """D4 element t of tiles whose rows and columns are `dims`, not necessarily contiguous."""
    x = x.flip(dims[1]) if t // 4 else x
    return torch.rot90(x, t % 4, dims=dims)


def apply_d4(
    x: torch.Tensor, transform: torch.Tensor | int, dims: tuple[int, int] = NHWC_ROWS_COLUMNS
) -> torch.Tensor:
    """Tiles turned by one D4 element (an int) or by one element per tile ((B,) int64)."""
    if isinstance(transform, int):
        return d4_view(x, transform, dims).contiguous()
    # which tiles drew which element is found on the host, so CUDA work is queued without a sync
    transform = transform.cpu()
    out = x.clone()  # all overwritten; empty_like fills first, slowly, under deterministic algorithms
    for t in range(D4_SIZE):  # one flip/rot90 per element, on the tiles that drew it
        tiles = (transform == t).nonzero().squeeze(1)
        if len(tiles):
            tiles = tiles.to(x.device, non_blocking=True)
            out.index_copy_(0, tiles, d4_view(x.index_select(0, tiles), t, dims))
    return out


@functools.cache
def d4_affine(size: int) -> np.ndarray:
    """(8, 3) int64: under D4 element t, output pixel (i, j) of a size x size tile is source pixel
    base + i * row_step + j * col_step (row t: base, row_step, col_step), read off `d4_view`."""
    pixels = torch.arange(size * size).view(1, size, size, 1)
    where = torch.stack([d4_view(pixels, t)[0, :, :, 0] for t in range(D4_SIZE)]).numpy()
    base, one = where[:, 0, 0], min(1, size - 1)  # a one-pixel tile's steps are never used (0)
    return np.stack([base, where[:, one, 0] - base, where[:, 0, one] - base], axis=1)


def normalise_(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std of float NCHW tiles, in place, as x * scale + shift per channel: a
    multiply, then an add (never a fused multiply-add: the compiled CPU pass rounds the same way)."""
    return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Float NCHW tiles (0..255) times per-tile brightness and saturation factors in
    [1 - strength, 1 + strength], drawn on the CPU; values stay in 0..255."""
    factors = 1 + strength * (2 * torch.rand((2, len(x), 1, 1, 1), generator=generator) - 1)
    brightness, saturation = factors.to(x.device)
    x = x * brightness
    gray = x.mean(dim=1, keepdim=True)
    return (gray + (x - gray) * saturation).clamp_(0, 255)


class BatchTransform:
    """uint8 NHWC tiles -> the model's input, float32 NCHW on `device`, normalised with the store's
    train-only statistics (`store.load_stats`), augmented in training only. `cpu_accelerator` auto
    (`training.cpu_accelerator`): the D4 view, conversion and normalisation as one compiled CPU pass."""

    def __init__(
        self,
        stats: dict,
        *,
        device: str | torch.device = "cpu",
        augment: bool = True,
        color_jitter: float = 0.0,
        channels_last: bool = False,
        cpu_accelerator: str | bool = "auto",
    ):
        if cpu_accelerator not in CPU_ACCELERATOR_SETTINGS:
            raise ValueError(
                f"cpu_accelerator must be one of {CPU_ACCELERATOR_SETTINGS}, got {cpu_accelerator!r}"
            )
        self.device = torch.device(device)
        mean = torch.tensor(stats["mean"], dtype=torch.float32, device=self.device)
        std = torch.tensor(stats["std"], dtype=torch.float32, device=self.device)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.augment = augment
        self.color_jitter = color_jitter
        self.channels_last = channels_last
        self.accelerated = cpu_accelerator == "auto" and self.device.type == "cpu"

    def to_input(
        self, x_uint8: torch.Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        b, h, w, c = x_uint8.shape
        if h != w or c != CHANNELS:
            raise ValueError(f"expected square RGB tiles (B, H, H, {CHANNELS}), got {tuple(x_uint8.shape)}")
        x = x_uint8.to(self.device, non_blocking=True)
        transforms = torch.randint(0, D4_SIZE, (b,), generator=generator) if train and self.augment else None
        jitter = train and self.color_jitter > 0
        out = self._float(x, transforms, normalise=not jitter)  # jitter works on 0..255: normalised after it
        if jitter:
            out = normalise_(color_jitter(out, self.color_jitter, generator), self.scale, self.shift)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    __call__ = to_input

    def _float(self, x: torch.Tensor, transforms: torch.Tensor | None, *, normalise: bool = False):
        """float32 NCHW of uint8 NHWC tiles, tile i turned by D4 element transforms[i] (None: as is)."""
        accelerator = cpu_accelerator() if self.accelerated else None
        if accelerator is not None:  # it writes channels_last at once when asked: a copy less
            scale, shift = (self.scale, self.shift) if normalise else (None, None)
            affine = d4_affine(x.shape[1])
            return accelerator.d4_normalise(x, transforms, affine, scale, shift, self.channels_last)
        planes = x.permute(0, 3, 1, 2).contiguous()  # the D4 view on colour planes, not pixels: 25% faster
        if transforms is not None:
            planes = apply_d4(planes, transforms, NCHW_ROWS_COLUMNS)
        return normalise_(planes.float(), self.scale, self.shift) if normalise else planes.float()


@functools.cache
def cpu_accelerator():
    """`pcamflow.data.cpu_accelerator` once its compiled pass is ready in this process; None, with one
    warning naming the cause, when it cannot run here (the torch ops give the same values)."""
    try:
        from pcamflow.data import cpu_accelerator as accelerator  # numba: imported only when asked for

        accelerator.compiled_passes()
    except Exception as exc:  # numba missing, JIT disabled, a failed compile: never fatal
        log.warning(
            "training.cpu_accelerator: the compiled CPU pass cannot run here (%s: %s); using the torch ops",
            type(exc).__name__,
            first_line(exc),
        )
        return None
    return accelerator
