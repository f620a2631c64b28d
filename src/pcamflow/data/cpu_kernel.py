"""The input transform on a CPU as one compiled pass over the batch.

uint8 NHWC tiles -> D4 view -> float32 -> (x * scale + shift) per channel -> NCHW, reading each tile
once and writing each output value once. The tiles are read straight from where they are stored
(rows `idx` of the store's array, in memory or memory-mapped), so a training batch needs no separate
gather into an intermediate uint8 batch, and the gather is shared over the threads with the rest.
The same transform in torch ops (what runs on CUDA, and what `torch.export` traces) makes several
passes over the float batch, which on a CPU costs several times more than the copy itself. Values are bit-identical to the torch ops (tested): float32
multiply then add, never a fused multiply-add (numba's default, fastmath off).

A D4 element maps output pixel (i, j) to source pixel base + i * row_step + j * col_step (the affine
form of `pipeline._d4_index_maps`), so each output row is one walk through the tile. Indices are
unsigned so numba adds no negative-index wraparound, which lets LLVM vectorise the rows that walk
the tile forwards or backwards (half the D4 elements); the transposed ones stay scalar.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np


def _compiled(**options):
    """numba.njit, cached on disk (compiling takes seconds, every training job would pay it) where
    numba finds a writable place for the cache; otherwise compiled once per process."""

    def wrap(fn):
        try:
            return numba.njit(nogil=True, cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(fn)

    return wrap


CHANNELS = 3  # the kernel writes the three planes of an RGB tile in one loop
_U = np.uint64
MIN_TILES_PER_THREAD = 8


@_compiled(inline="always")
def _pixel(tile, k, planes, d, scale, shift):
    o0, o1, o2 = planes
    s0, s1, s2 = scale
    h0, h1, h2 = shift
    o0[d] = np.float32(tile[k]) * s0 + h0
    o1[d] = np.float32(tile[k + _U(1)]) * s1 + h1
    o2[d] = np.float32(tile[k + _U(2)]) * s2 + h2


@_compiled(inline="always")
def _row(tile, src, col_step, planes, dst, width, scale, shift):
    if col_step == 1:  # constant steps in separate loops: LLVM vectorises these two
        for j in range(width):
            _pixel(tile, _U(src * CHANNELS) + _U(j * CHANNELS), planes, _U(dst + j), scale, shift)
    elif col_step == -1:
        for j in range(width):
            _pixel(tile, _U(src * CHANNELS) - _U(j * CHANNELS), planes, _U(dst + j), scale, shift)
    else:
        for j in range(width):
            _pixel(tile, _U((src + j * col_step) * CHANNELS), planes, _U(dst + j), scale, shift)


@_compiled()
def _tile(tile, affine, out, height, width, scale, shift):
    base, row_step, col_step = affine[0], affine[1], affine[2]
    planes = (out[0], out[1], out[2])
    scale = (scale[0], scale[1], scale[2])
    shift = (shift[0], shift[1], shift[2])
    for r in range(height):
        i = r if row_step > 0 else height - 1 - r  # rows in the order that reads the tile front to back
        _row(tile, base + i * row_step, col_step, planes, i * width, width, scale, shift)


@_compiled()
def d4_normalise(x, idx, transforms, affine, scale, shift, out, height, width):
    """out[b] = normalised D4 view `transforms[b]` of tile x[idx[b]].

    x: uint8 (N, H*W*3); idx: int64 (B,), each in [0, N) (IndexError otherwise, before any read);
    transforms: int64 (B,); affine: int64 (8, 3); scale, shift: float32 (3,);
    out: float32 (B, 3, H*W), written in full.
    """
    for b in range(idx.shape[0]):  # numba does not check bounds: a bad index would read anywhere
        if idx[b] < 0 or idx[b] >= x.shape[0]:
            raise IndexError("tile index out of range")
    for b in range(idx.shape[0]):
        _tile(x[idx[b]], affine[transforms[b]], out[b], height, width, scale, shift)


def d4_normalise_threaded(x, idx, transforms, affine, scale, shift, out, height, width, threads: int) -> None:
    """`d4_normalise` over `threads` threads (the kernel releases the GIL), each on a run of whole
    tiles, none with fewer than MIN_TILES_PER_THREAD: thread start-up costs more than small runs."""
    n = idx.shape[0]
    chunks = max(1, min(threads, n // MIN_TILES_PER_THREAD))
    if chunks == 1:
        d4_normalise(x, idx, transforms, affine, scale, shift, out, height, width)
        return
    runs = [slice(i * n // chunks, (i + 1) * n // chunks) for i in range(chunks)]
    pending = [
        _pool(chunks - 1).submit(
            d4_normalise, x, idx[r], transforms[r], affine, scale, shift, out[r], height, width
        )
        for r in runs[1:]
    ]
    first = runs[0]
    d4_normalise(x, idx[first], transforms[first], affine, scale, shift, out[first], height, width)
    for future in pending:
        future.result()


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of `workers` threads (keyed by pid: a forked child has none of its parent's threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="pcamflow-d4")
    return _POOLS[key]
