"""The optional compiled CPU pass of the input transform (`training.cpu_accelerator: auto`): uint8 NHWC
tiles -> D4 view -> float32 -> x * scale + shift per channel -> NCHW (or channels_last), one tile at a
time in a plain numba loop, where the torch ops (`pcamflow.data.transforms`, the reference) make several
passes over the whole batch (what that buys: docs/usage.md, "The input pipeline"). The values are
bit-identical to the torch ops (tested): float32 multiply, then add, never a fused multiply-add (numba's
default: fastmath off). With more than one torch thread, the tiles are shared over as many of numba's
threads (`prange`). Only `transforms.cpu_accelerator` imports this module, so a GPU job never loads numba.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading

import numba
import numpy as np
import torch

from pcamflow.constants import CHANNELS
from pcamflow.errors import first_line

log = logging.getLogger(__name__)

# x (B, H*W*3) uint8, transforms (B,), affine (8, 3) int64, scale and shift (3,), out (B, 3, H, W):
# contiguous NCHW, or the NCHW view of NHWC memory (channels_last)
ARGUMENTS = "uint8[:, ::1], int64[::1], int64[:, ::1], float32[::1], float32[::1], float32[:, :, :, {}]"
SIGNATURES = (f"void({ARGUMENTS.format('::1')})", f"void({ARGUMENTS.format(':')})")
# numba's own thread pool: its OpenMP layer would share torch's OpenMP runtime and change torch's
# thread count (and with it a run's floating-point sums) when it starts
numba.config.THREADING_LAYER = "workqueue"  # read when numba first starts its threads
_ONE_CALL = threading.Lock()  # the workqueue layer runs one parallel call at a time in a process


def d4_normalise(
    x: torch.Tensor,
    transforms: torch.Tensor | None,
    affine: np.ndarray,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    channels_last: bool = False,
) -> torch.Tensor:
    """float32 (B, 3, H, H) of uint8 (B, H, H, 3) CPU tiles: tile b turned by D4 element transforms[b]
    (None: as is; `affine`: the elements' pixel maps, `transforms.d4_affine`), then x * scale + shift
    per channel (None: not normalised); with channels_last, written in that memory format."""
    b, size = x.shape[0], x.shape[1]
    tiles = x.contiguous().numpy().reshape(b, -1)
    transforms = np.zeros(b, np.int64) if transforms is None else transforms.numpy().astype(np.int64)
    scale = np.ones(CHANNELS, np.float32) if scale is None else scale.numpy()
    shift = np.zeros(CHANNELS, np.float32) if shift is None else shift.numpy()
    # numpy's empty: torch's fills its memory with NaN first under deterministic algorithms
    if channels_last:
        out = torch.from_numpy(np.empty((b, size, size, CHANNELS), np.float32)).permute(0, 3, 1, 2)
    else:
        out = torch.from_numpy(np.empty((b, CHANNELS, size, size), np.float32))
    args = (tiles, transforms, affine, scale, shift, out.numpy())
    in_this_thread, over_threads = compiled_passes()
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads == 1:  # the training default: no hand-off to numba's threads
        in_this_thread(*args)
    else:
        with _ONE_CALL:
            numba.set_num_threads(threads)
            over_threads(*args)
    return out


@numba.njit(inline="always")  # compiled into the two loops below
def _tile(x, t, affine, scale, shift, out):
    """Flat NHWC tile x turned by D4 element t (row t of `affine`) into out (C, H, W) as x * scale + shift."""
    size = out.shape[1]
    for i in range(size):
        row = affine[t, 0] + i * affine[t, 1]  # the source pixel of output pixel (i, 0)
        for j in range(size):
            pixel = (row + j * affine[t, 2]) * CHANNELS
            for c in range(CHANNELS):
                out[c, i, j] = np.float32(x[pixel + c]) * scale[c] + shift[c]


@numba.njit(cache=True)
def _each_tile(x, transforms, affine, scale, shift, out):
    for b in range(x.shape[0]):
        _tile(x[b], transforms[b], affine, scale, shift, out[b])


@numba.njit(parallel=True, cache=True)
def _each_tile_over_threads(x, transforms, affine, scale, shift, out):
    for b in numba.prange(x.shape[0]):
        _tile(x[b], transforms[b], affine, scale, shift, out[b])


@functools.cache
def compiled_passes() -> tuple:
    """`_each_tile` and `_each_tile_over_threads` compiled for SIGNATURES: numba's code cached on disk,
    or compiled (seconds) and cached; a cache file numba cannot read is compiled afresh, with one warning."""
    if numba.config.DISABLE_JIT:
        raise RuntimeError("NUMBA_DISABLE_JIT is set")
    passes = (_each_tile, _each_tile_over_threads)
    unreadable = None
    for compiled, signature in itertools.product(passes, SIGNATURES):
        try:
            compiled.compile(signature)
        except Exception as exc:  # a cache file numba cannot read (UnpicklingError, EOFError, ...)
            compiled._cache.flush()  # numba's own reset: an empty cache index, so this compile rewrites it
            compiled.compile(signature)
            unreadable = unreadable or exc
    for compiled in passes:
        compiled.disable_compile()  # arguments of other types are a bug here, never a silent compile
    if unreadable is not None:
        log.warning(
            "training.cpu_accelerator: numba's cached code for the CPU pass was unreadable (%s: %s); "
            "compiled afresh and cached again",
            type(unreadable).__name__,
            first_line(unreadable),
        )
    return passes
