"""The input transform on a CPU as one compiled pass over the batch.

uint8 NHWC tiles -> D4 view -> float32 -> (x * scale + shift) per channel -> NCHW. The tiles are
read straight from where they are stored (rows `idx` of the store's array, in memory or
memory-mapped), so a training batch needs no separate gather into an intermediate uint8 batch, and
the gather is shared over the threads with the rest. The same transform in torch ops (what runs on
CUDA, and what `torch.export` traces) makes several passes over the float batch, which on a CPU
costs several times more than the copy itself. Values are bit-identical to the torch ops (tested):
float32 multiply then add, never a fused multiply-add (numba's default, fastmath off).

Per tile, all in the core's L1/L2 cache until the float planes are written out:
  1. the interleaved RGB pixels are split into three uint8 planes (a loop LLVM vectorises);
  2. a D4 element that swaps rows and columns (half of them) transposes each plane, 8x8 bytes at
     a time in 64-bit words (three rounds of masked swaps): about half the cost of walking the
     tile column by column, element by element;
  3. what is left of the D4 element is a flip of rows and/or columns: each output row is one
     forward or backward walk through a plane row, converted and normalised in vector registers.
A D4 element maps output pixel (i, j) to source pixel base + i * row_step + j * col_step (the affine
form of `pipeline._d4_index_maps`). Output rows are slices indexed from 0 up and planes are indexed
with unsigned ints, so numba adds no negative-index wraparound and LLVM vectorises the forward and
the backward walks alike; rows are visited in the order that reads a plane front to back (the other
order measured several times slower).
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


CHANNELS = 3  # the kernel splits the three planes of an RGB tile in one loop
_U = np.uint64
MIN_TILES_PER_THREAD = 8
TRANSPOSED_COST = 1.5  # a transposing D4 element's time per tile over a flip's (measured)
BLOCK = 8  # the transpose works on 8x8-byte blocks: one 64-bit word per block row
# the masks and shifts of the three swap rounds of an 8x8 byte transpose (4x4, 2x2, 1x1 blocks)
_ROUNDS = (
    (_U(32), _U(0x00000000FFFFFFFF)),
    (_U(16), _U(0x0000FFFF0000FFFF)),
    (_U(8), _U(0x00FF00FF00FF00FF)),
)
_R32, _R16, _R8 = _ROUNDS


@_compiled()
def _split_planes(tile, planes):
    """planes[c, k] = tile[3k + c]: interleaved RGB pixels -> three uint8 planes."""
    for k in range(planes.shape[1]):
        planes[0, k] = tile[_U(k * CHANNELS)]
        planes[1, k] = tile[_U(k * CHANNELS) + _U(1)]
        planes[2, k] = tile[_U(k * CHANNELS) + _U(2)]


@_compiled(inline="always")
def _swap(a, b, round_):
    """One swap round of the 8x8 byte transpose on rows a and b (b is `shift` bits further on)."""
    shift, mask = round_
    t = ((a >> shift) ^ b) & mask
    return a ^ (t << shift), b ^ t


@_compiled(inline="always")
def _swap_pairs(a, b, c, d, e, f, g, h, round_):
    """`_swap` on the four row pairs (a, b), (c, d), (e, f), (g, h)."""
    a, b = _swap(a, b, round_)
    c, d = _swap(c, d, round_)
    e, f = _swap(e, f, round_)
    g, h = _swap(g, h, round_)
    return a, b, c, d, e, f, g, h


@_compiled()
def _transpose_blocks(plane, out, size):
    """out = plane transposed, both (size * size,) uint8 with size a multiple of BLOCK: each 8x8
    block's rows are loaded as eight 64-bit words and transposed in registers."""
    src, dst = plane.view(np.uint64), out.view(np.uint64)
    words = _U(size // BLOCK)  # words per row; unsigned, so no index needs a wraparound check
    for r in range(words):
        for c in range(words):
            at = _U(r) * _U(BLOCK) * words + _U(c)
            a0, a1, a2, a3 = src[at], src[at + words], src[at + _U(2) * words], src[at + _U(3) * words]
            a4, a5 = src[at + _U(4) * words], src[at + _U(5) * words]
            a6, a7 = src[at + _U(6) * words], src[at + _U(7) * words]
            # swap rounds between rows 4, 2, then 1 apart: 4x4, 2x2, then 1x1 blocks change places
            a0, a4, a1, a5, a2, a6, a3, a7 = _swap_pairs(a0, a4, a1, a5, a2, a6, a3, a7, _R32)
            a0, a2, a1, a3, a4, a6, a5, a7 = _swap_pairs(a0, a2, a1, a3, a4, a6, a5, a7, _R16)
            a0, a1, a2, a3, a4, a5, a6, a7 = _swap_pairs(a0, a1, a2, a3, a4, a5, a6, a7, _R8)
            at = _U(c) * _U(BLOCK) * words + _U(r)
            dst[at], dst[at + words], dst[at + _U(2) * words], dst[at + _U(3) * words] = a0, a1, a2, a3
            dst[at + _U(4) * words], dst[at + _U(5) * words] = a4, a5
            dst[at + _U(6) * words], dst[at + _U(7) * words] = a6, a7


@_compiled()
def _transpose(plane, out, size):
    """out = plane transposed, both (size * size,) uint8 (element by element when size is not a
    multiple of BLOCK: other tile sizes work, at a slower pace)."""
    if size % BLOCK == 0:
        _transpose_blocks(plane, out, size)
        return
    for r in range(size):
        for c in range(size):
            out[c * size + r] = plane[r * size + c]


@_compiled()
def _tile(tile, affine, planes, turned, out, size, scale, shift):
    """out (3, size * size) = normalised D4 view `affine` of one interleaved (size * size * 3) tile.

    A D4 element that swaps rows and columns is made a flip by transposing each uint8 plane in turn
    (a plane stays in L1 cache meanwhile); a flip is then just the direction of the walks."""
    _split_planes(tile, planes)
    base, row_step, col_step = affine[0], affine[1], affine[2]
    transposed = size > 1 and col_step != 1 and col_step != -1
    if transposed:  # source pixel (r, c) is pixel c * size + r of a transposed plane
        base = (base % size) * size + base // size
        row_step, col_step = row_step * size, col_step // size
    for c in range(CHANNELS):
        plane = planes[c]
        if transposed:
            _transpose(plane, turned, size)
            plane = turned
        for r in range(size):
            i = r if row_step > 0 else size - 1 - r  # rows in the order that reads the plane front to back
            row = out[c, i * size : (i + 1) * size]
            _convert_row(plane, base + i * row_step, col_step, row, size, scale[c], shift[c])


@_compiled(inline="always")
def _convert_row(plane, src, col_step, out, width, scale, shift):
    """out[j] = plane[src + j * col_step] * scale + shift for j < width, col_step +1 or -1.

    `out` is a slice indexed from 0 up and `plane` is indexed unsigned: LLVM then vectorises the
    forward and the backward walk alike, whatever the tile size."""
    if col_step == 1:
        for j in range(width):
            out[j] = np.float32(plane[_U(src) + _U(j)]) * scale + shift
    else:
        for j in range(width):
            out[j] = np.float32(plane[_U(src) - _U(j)]) * scale + shift


@_compiled()
def d4_normalise(x, idx, transforms, affine, scale, shift, out, height, width):
    """out[b] = normalised D4 view `transforms[b]` of tile x[idx[b]] (square tiles: height == width).

    x: uint8 (N, H*W*3); idx: int64 (B,), each in [0, N) (IndexError otherwise, before any read);
    transforms: int64 (B,); affine: int64 (8, 3); scale, shift: float32 (3,);
    out: float32 (B, 3, H*W), written in full.
    """
    for b in range(idx.shape[0]):  # numba does not check bounds: a bad index would read anywhere
        if idx[b] < 0 or idx[b] >= x.shape[0]:
            raise IndexError("tile index out of range")
    planes = np.empty((CHANNELS, height * width), np.uint8)  # scratch, one set per call (per thread)
    turned = np.empty(height * width, np.uint8)
    for b in range(idx.shape[0]):
        _tile(x[idx[b]], affine[transforms[b]], planes, turned, out[b], height, scale, shift)


def d4_normalise_threaded(x, idx, transforms, affine, scale, shift, out, height, width, threads: int) -> None:
    """`d4_normalise` over `threads` threads (the kernel releases the GIL), each on a run of whole
    tiles, none with fewer than MIN_TILES_PER_THREAD: thread start-up costs more than small runs."""
    n = idx.shape[0]
    chunks = max(1, min(threads, n // MIN_TILES_PER_THREAD))
    if chunks == 1:
        d4_normalise(x, idx, transforms, affine, scale, shift, out, height, width)
        return
    runs = _balanced_runs(affine[transforms], chunks)
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


def _balanced_runs(affines: np.ndarray, chunks: int) -> list[slice]:
    """`chunks` consecutive runs of the batch with about the same work each: a tile whose D4 element
    transposes (column step not +-1) costs TRANSPOSED_COST times one that does not."""
    cost = np.where(np.abs(affines[:, 2]) == 1, 1.0, TRANSPOSED_COST).cumsum()
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, chunks) / chunks).tolist()
    bounds = [0, *cuts, len(affines)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of `workers` threads (keyed by pid: a forked child has none of its parent's threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="pcamflow-d4")
    return _POOLS[key]
