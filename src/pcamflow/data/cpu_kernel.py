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
     a time, each block by one vector byte shuffle (far cheaper than walking the tile column by
     column, element by element);
  3. what is left of the D4 element is a flip of rows and/or columns: each output row is one
     forward or backward walk through a plane row, converted and normalised in vector registers.
A D4 element maps output pixel (i, j) to source pixel base + i * row_step + j * col_step (the affine
form of `pipeline._d4_index_maps`). Output rows are slices indexed from 0 up and planes are indexed
with unsigned ints, so numba adds no negative-index wraparound and LLVM vectorises the forward and
the backward walks alike; rows are visited in the order that reads a plane front to back (the other
order measured several times slower).

Threads: `d4_normalise_threaded` cuts a batch into shares of about equal work (the kernel finds its
own share, so a hand-off passes the same arguments to every thread) and hands them to helper
threads through plain locks; the calling thread works on the first share meanwhile.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


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
MIN_TILES_PER_THREAD = 4  # from 8 tiles on, two threads beat one (measured on 2 cores)
# share 0's extra work, in tiles: a helper starts about one tile's time later (a hand-off, about
# 10 us on a 2-core VM, against about 10 us per tile)
HEAD_START = 1.0
TRANSPOSED_COST = 1.3  # a transposing D4 element's time per tile over a flip's (measured)
BLOCK = 8  # the transpose works on 8x8-byte blocks: one 64-bit word per block row
_WORD, _BYTE, _LANE = ir.IntType(64), ir.IntType(8), ir.IntType(32)
# byte r * BLOCK + c of the transposed block is byte c * BLOCK + r of the block (row-major bytes)
_TRANSPOSED_BYTES = [c * BLOCK + r for r in range(BLOCK) for c in range(BLOCK)]


@_compiled()
def _split_planes(tile, planes):
    """planes[c, k] = tile[3k + c]: interleaved RGB pixels -> three uint8 planes."""
    for k in range(planes.shape[1]):
        planes[0, k] = tile[_U(k * CHANNELS)]
        planes[1, k] = tile[_U(k * CHANNELS) + _U(1)]
        planes[2, k] = tile[_U(k * CHANNELS) + _U(2)]


@intrinsic
def _transpose_block(typingctx, src, src_at, dst, dst_at, row_bytes):
    """dst's 8x8-byte block at byte dst_at = the transpose of src's block at src_at (both uint8
    arrays whose rows are `row_bytes` apart; no bounds check).

    The block's eight rows are loaded as the eight 64-bit lanes of one vector and transposed by one
    byte shuffle, which LLVM lowers for the target (one vpermt2b with AVX-512 VBMI): 0.84 against
    2.34 us per 96x96 plane for three rounds of masked swaps in 64-bit scalar words (measured)."""

    def codegen(context, builder, signature, args):
        src_array, src_at, dst_array, dst_at, row_bytes = (
            context.cast(builder, value, kind, types.intp) if isinstance(kind, types.Integer) else value
            for value, kind in zip(args, signature.args, strict=True)
        )
        src_data = context.make_array(signature.args[0])(context, builder, src_array).data
        dst_data = context.make_array(signature.args[2])(context, builder, dst_array).data

        def row(data, at, r):
            offset = builder.add(at, builder.mul(row_bytes, ir.Constant(row_bytes.type, r)))
            return builder.bitcast(builder.gep(data, [offset]), _WORD.as_pointer())

        rows = ir.Constant(ir.VectorType(_WORD, BLOCK), ir.Undefined)
        for r in range(BLOCK):
            word = builder.load(row(src_data, src_at, r), align=1)
            rows = builder.insert_element(rows, word, ir.Constant(_LANE, r))
        block_bytes = ir.VectorType(_BYTE, BLOCK * BLOCK)
        turned = builder.shuffle_vector(
            builder.bitcast(rows, block_bytes),
            ir.Constant(block_bytes, ir.Undefined),
            ir.Constant(ir.VectorType(_LANE, BLOCK * BLOCK), _TRANSPOSED_BYTES),
        )
        turned = builder.bitcast(turned, rows.type)
        for r in range(BLOCK):
            word = builder.extract_element(turned, ir.Constant(_LANE, r))
            builder.store(word, row(dst_data, dst_at, r), align=1)
        return context.get_dummy_value()

    return types.void(src, src_at, dst, dst_at, row_bytes), codegen


@_compiled()
def _transpose_blocks(plane, out, size):
    """out = plane transposed, both (size * size,) uint8 with size a multiple of BLOCK, block by block."""
    for r in range(0, size, BLOCK):
        for c in range(0, size, BLOCK):
            _transpose_block(plane, r * size + c, out, c * size + r, size)


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
def d4_normalise(x, idx, transforms, affine, scale, shift, out, height, width, part, parts):
    """out[b] = normalised D4 view `transforms[b]` of tile x[idx[b]] (square tiles: height == width),
    for the tiles of share `part` of `parts` (`_share`; all of them when parts is 1).

    x: uint8 (N, H*W*3); idx: int64 (B,), each in [0, N) (IndexError otherwise, before any read);
    transforms: int64 (B,); affine: int64 (8, 3); scale, shift: float32 (3,);
    out: float32 (B, 3, H*W), written in full by the `parts` shares together.
    """
    for b in range(idx.shape[0]):  # numba does not check bounds: a bad index would read anywhere
        if idx[b] < 0 or idx[b] >= x.shape[0]:
            raise IndexError("tile index out of range")
    planes = np.empty((CHANNELS, height * width), np.uint8)  # scratch, one set per call (per thread)
    turned = np.empty(height * width, np.uint8)
    first, end = _share(affine, transforms, part, parts)
    for b in range(first, end):
        _tile(x[idx[b]], affine[transforms[b]], planes, turned, out[b], height, scale, shift)


@_compiled()
def _share(affine, transforms, part, parts):
    """Tiles [first, end) of share `part`: the batch cut into `parts` consecutive runs of about the
    same work (a tile whose D4 element transposes costs TRANSPOSED_COST times one that does not),
    share 0 HEAD_START more. Every share computes the same cuts, so they cover the batch once."""
    total = 0.0
    for b in range(transforms.shape[0]):
        total += _cost(affine[transforms[b]])
    first = _cut(affine, transforms, _work_before(part, parts, total))
    return first, _cut(affine, transforms, _work_before(part + 1, parts, total))


@_compiled(inline="always")
def _work_before(part, parts, total):
    """The work of the shares before `part`. Share 0 runs in the calling thread, which starts at
    once; the others wait for a hand-off to a helper thread, so they get HEAD_START less each."""
    if part == 0:
        return 0.0
    return min(total, (part * total + (parts - part) * HEAD_START) / parts)


@_compiled(inline="always")
def _cost(affine):
    return 1.0 if affine[2] == 1 or affine[2] == -1 else TRANSPOSED_COST


@_compiled()
def _cut(affine, transforms, work):
    """The first tile at which the tiles before it cost at least `work` (the batch size if none)."""
    done = 0.0
    for b in range(transforms.shape[0]):
        if done >= work - 1e-9:  # the last share's end is the batch's end, whatever the rounding
            return b
        done += _cost(affine[transforms[b]])
    return transforms.shape[0]


def d4_normalise_threaded(x, idx, transforms, affine, scale, shift, out, height, width, threads: int) -> None:
    """`d4_normalise` over `threads` threads (the kernel releases the GIL), each on its share of the
    batch, none with fewer than about MIN_TILES_PER_THREAD tiles: a hand-off costs more than a small
    share. A second caller while the helpers are busy (another Python thread) runs on its own."""
    args = (x, idx, transforms, affine, scale, shift, out, height, width)
    parts = max(1, min(threads, idx.shape[0] // MIN_TILES_PER_THREAD))
    if parts == 1 or not _HELPERS_FREE.acquire(blocking=False):
        d4_normalise(*args, 0, 1)
        return
    try:
        helpers = _helpers(parts - 1)
        for part, helper in enumerate(helpers, start=1):
            helper.start(d4_normalise, *args, part, parts)
        try:
            d4_normalise(*args, 0, parts)
        finally:  # the helpers write into `out`: never return before they are done
            errors = _wait_for(helpers)
        for error in errors:
            if error is not None:
                raise error
    finally:
        _HELPERS_FREE.release()


class _Helper:
    """A thread that runs one call at a time, handed over with two plain locks: a round trip takes
    about 15 us on a 2-core VM, against about 40 us for a ThreadPoolExecutor future."""

    def __init__(self):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._call = self._error = None
        threading.Thread(target=self._serve, name="pcamflow-d4", daemon=True).start()

    def start(self, fn, *args) -> None:
        self._call = (fn, args)
        self._go.release()

    def wait(self) -> BaseException | None:
        """Block until the call is done; its exception, if it raised one."""
        self._done.acquire()
        error, self._error, self._call = self._error, None, None
        return error

    def _serve(self) -> None:
        while True:
            self._go.acquire()
            fn, args = self._call
            try:
                fn(*args)
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
            self._done.release()


def _wait_for(helpers: list[_Helper]) -> list[BaseException | None]:
    """Each helper's exception (None: done), once all are done. A wait interrupted (Ctrl-C in a
    notebook) leaves helpers that may still be writing: they are dropped, later batches get new ones."""
    try:
        return [helper.wait() for helper in helpers]
    except BaseException:
        _HELPERS.pop(os.getpid(), None)
        raise


_HELPERS_FREE = threading.Lock()  # one batch at a time uses the helpers
_HELPERS: dict[int, list[_Helper]] = {}


def _helpers(count: int) -> list[_Helper]:
    """This process's first `count` helpers (keyed by pid: a forked child has none of its parent's threads)."""
    helpers = _HELPERS.setdefault(os.getpid(), [])
    helpers.extend(_Helper() for _ in range(count - len(helpers)))
    return helpers[:count]
