"""Raw PCAM H5 files: validate one split's (x, y) pair, stream its tiles in blocks, clean them.

`clean_tiles` is the single definition of a "cleaned tile" (NaN/inf -> 0, clip to [0, 255],
round, uint8): the audit, prepare, evaluation and the course loader benchmark all use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants
from pcamflow.errors import PcamflowError, first_line
from pcamflow.io import read_ahead

H5_SUFFIXES = (".h5", ".hdf5")
X_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
TILE_VALUES = int(np.prod(constants.TILE_SHAPE))  # values per tile (96 * 96 * 3)


@dataclass
class RawTiles:
    """An open, validated x dataset: the tiles stay on disk and are read in blocks."""

    x_path: Path
    x: h5py.Dataset

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Raw tiles [start, stop) as stored (uint8 or float), into the first rows of `out` if
        given; a read failure names the file."""
        try:
            if out is None:
                return self.x[start:stop]
            self.x.read_direct(out, np.s_[start:stop], np.s_[: stop - start])
            return out[: stop - start]
        except (OSError, RuntimeError) as exc:
            raise PcamflowError(
                f"{self.x_path}: cannot read tiles {start}-{stop} (truncated or corrupt file?): {first_line(exc)}"
            ) from None

    def blocks(self, block_size: int, *, buffers: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(start, raw tiles) for consecutive blocks of at most block_size tiles; while the caller
        works on one block, the disk already reads the next (see prefetch).

        buffers=n reads the blocks into n arrays in turn: a block is overwritten n blocks later, so a
        caller may still use the last n - 1 blocks while it asks for the next. A fresh block-sized
        array each time (buffers=0) is memory the kernel must find (evicting page cache once the
        file fills it) and zero: a third of a float32 audit's time.
        """
        if block_size < 1:
            raise PcamflowError(f"block size must be at least 1, got {block_size}")
        shape = (min(block_size, len(self)), *self.x.shape[1:])
        arrays = [np.empty(shape, self.dtype) for _ in range(buffers)]
        for k, start in enumerate(range(0, len(self), block_size)):
            stop = min(start + block_size, len(self))
            block = self.read(start, stop, out=arrays[k % buffers] if buffers else None)
            self.prefetch(stop, min(stop + block_size, len(self)))
            yield start, block

    def prefetch(self, start: int, stop: int) -> None:
        """Have the disk read tiles [start, stop) ahead (io.read_ahead): a block is tens of MB.
        Only where the tiles lie in one contiguous run of the file (h5py's default layout)."""
        offset = self.x.id.get_offset()  # None for chunked, compressed or external storage
        if start >= stop or offset is None:
            return
        tile_bytes = self.dtype.itemsize * TILE_VALUES
        with contextlib.suppress(OSError):
            fd = os.open(self.x_path, os.O_RDONLY)
            try:
                read_ahead(fd, offset + start * tile_bytes, (stop - start) * tile_bytes)
            finally:
                os.close(fd)


@dataclass
class RawSplit(RawTiles):
    """One open, validated split: x on disk as in RawTiles; the labels are small and loaded."""

    y_path: Path
    labels: np.ndarray  # (N,) uint8 in {0, 1}
    y_shape: tuple  # as stored: (N, 1, 1, 1) in PCAM, or (N,)
    y_dtype: np.dtype  # as stored


@contextlib.contextmanager
def open_tiles(x_path: str | os.PathLike) -> Iterator[RawTiles]:
    """Open and validate an x file alone (tiles without labels); problems are one-line PcamflowErrors."""
    x_path = Path(x_path)
    with _open_h5(x_path) as x_file:
        yield RawTiles(x_path=x_path, x=_validated_x(x_file, x_path))


@contextlib.contextmanager
def open_split(x_path: str | os.PathLike, y_path: str | os.PathLike) -> Iterator[RawSplit]:
    """Open and validate one split's x and y files; every problem is a one-line PcamflowError."""
    x_path, y_path = Path(x_path), Path(y_path)
    with _open_h5(x_path) as x_file, _open_h5(y_path) as y_file:
        x = _validated_x(x_file, x_path)
        y = _dataset(y_file, y_path, constants.Y_KEY)
        labels = _read_labels(y, y_path)
        if len(labels) != x.shape[0]:
            raise PcamflowError(
                f"{x_path}: holds {x.shape[0]} tiles but {y_path} holds {len(labels)} labels (lengths differ)"
            )
        yield RawSplit(x_path=x_path, x=x, y_path=y_path, labels=labels, y_shape=y.shape, y_dtype=y.dtype)


def clean_tiles(tiles: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """The cleaned uint8 tiles: NaN and +-inf -> 0, clip to [0, 255], round half to even.

    uint8 input is returned as it is. With in_place=True a float input is overwritten on the way
    (saves one block-sized copy while streaming); the result is always a new uint8 array.
    """
    if tiles.dtype == np.uint8:
        return tiles
    work = tiles if in_place else tiles.copy()
    np.copyto(work, 0, where=~np.isfinite(work))  # as np.nan_to_num(nan=posinf=neginf=0), 5x faster
    np.clip(work, 0, 255, out=work)
    np.rint(work, out=work)
    return work.astype(np.uint8)


def blank_masks(tiles: np.ndarray, black_max: int, white_min: int) -> tuple[np.ndarray, np.ndarray]:
    """(black, white) per cleaned uint8 tile: every value at most black_max, or at least white_min
    (config audit.black_max / audit.white_min; the audit and predict's flags use the same rule)."""
    flat = tiles.reshape(len(tiles), -1)
    return flat.max(axis=1) <= black_max, flat.min(axis=1) >= white_min


HISTOGRAM_BYTES = 4 << 20  # of tiles per Pillow image: its 4-byte-a-pixel copy stays in the CPU's cache


def channel_histograms(tiles: np.ndarray) -> np.ndarray:
    """(3, 256) int64 counts of each value per channel of cleaned uint8 NHWC RGB tiles.

    Pillow counts the tiles as RGB images (one tile row per image row), HISTOGRAM_BYTES at a time:
    2x faster than whole blocks (Pillow copies them to 4 bytes a pixel first) and 6x faster than
    np.bincount, which widens every value to int64 (the audit and prepare count every tile of PCAM).
    Pillow releases the GIL, so the audit's threads count in parallel.
    """
    from PIL import Image

    if tiles.dtype != np.uint8 or tiles.shape[-1] != 3:
        raise ValueError(
            f"channel_histograms counts cleaned uint8 RGB tiles, got {tiles.dtype} {tiles.shape}"
        )
    width = tiles.shape[-2]
    pixels = np.ascontiguousarray(tiles).reshape(-1, width * 3)  # image rows
    rows = max(1, HISTOGRAM_BYTES // pixels.shape[1])
    counts = np.zeros(3 * 256, dtype=np.int64)
    for start in range(0, pixels.shape[0], rows):
        part = pixels[start : start + rows]
        counts += Image.frombuffer("RGB", (width, len(part)), part, "raw", "RGB", 0, 1).histogram()
    return counts.reshape(3, 256)


def histogram_moments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std on the [0, 1] scale of a (3, 256) histogram of uint8 values."""
    values = np.arange(counts.shape[1], dtype=np.float64) / (counts.shape[1] - 1)
    weights = counts / counts.sum(axis=1, keepdims=True)
    mean = (weights * values).sum(axis=1)
    var = (weights * (values[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return mean, np.sqrt(var)


def split_paths(raw_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """The (x, y) file paths of a split inside a directory of PCAM files."""
    raw_dir = Path(raw_dir)
    return raw_dir / constants.raw_filename(split, "x"), raw_dir / constants.raw_filename(split, "y")


def meta_path(x_path: str | os.PathLike, split: str) -> Path:
    """Where PCAM keeps a split's meta CSV: beside its x file."""
    return Path(x_path).parent / constants.meta_filename(split)


def labels_path(x_path: str | os.PathLike) -> Path:
    """Where PCAM keeps a split's labels: the `_y.h5` file beside its `_x.h5` (existing or not)."""
    x_path = Path(x_path)
    for suffix in H5_SUFFIXES:
        x_end = f"_x{suffix}"
        if x_path.name.endswith(x_end):
            return x_path.with_name(x_path.name[: -len(x_end)] + f"_y{suffix}")
    raise PcamflowError(f"{x_path}: expected a raw PCAM '_x.h5' file (its '_y.h5' beside it)")


# ---- validation helpers ----


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    if not path.exists():
        raise PcamflowError(f"{path}: no such file")
    if path.is_dir():
        raise PcamflowError(f"{path}: is a directory, expected an HDF5 file")
    if path.stat().st_size == 0:
        raise PcamflowError(f"{path}: empty file (0 bytes), expected HDF5")
    if not h5py.is_hdf5(path):
        raise PcamflowError(f"{path}: not an HDF5 file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise PcamflowError(
            f"{path}: unreadable HDF5 file (truncated or corrupt): {first_line(exc)}"
        ) from None
    with handle:
        yield handle


def _dataset(handle: h5py.File, path: Path, key: str) -> h5py.Dataset:
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        found = ", ".join(repr(k) for k in handle) or "none"
        raise PcamflowError(f"{path}: no dataset {key!r} (keys found: {found})")
    return handle[key]


def _validated_x(handle: h5py.File, path: Path) -> h5py.Dataset:
    x = _dataset(handle, path, constants.X_KEY)
    _check_x(x, path)
    return x


def _check_x(x: h5py.Dataset, path: Path) -> None:
    if x.ndim != 4 or x.shape[1:] != constants.TILE_SHAPE:
        raise PcamflowError(f"{path}: dataset 'x' has shape {x.shape}; expected (N, 96, 96, 3)")
    if x.dtype not in X_DTYPES:
        raise PcamflowError(f"{path}: dataset 'x' has dtype {x.dtype}; expected uint8, float32 or float64")
    if x.shape[0] == 0:
        raise PcamflowError(f"{path}: empty split (0 tiles)")


def _read_labels(y: h5py.Dataset, path: Path) -> np.ndarray:
    if y.ndim == 0 or y.shape[1:] not in ((), constants.Y_SHAPE):
        raise PcamflowError(f"{path}: dataset 'y' has shape {y.shape}; expected (N, 1, 1, 1) or (N,)")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise PcamflowError(f"{path}: dataset 'y' has dtype {y.dtype}; expected integer or float labels")
    if y.shape[0] == 0:
        raise PcamflowError(f"{path}: empty split (0 labels)")
    try:
        values = y[()].reshape(-1)
    except (OSError, RuntimeError) as exc:
        raise PcamflowError(
            f"{path}: cannot read labels (truncated or corrupt file?): {first_line(exc)}"
        ) from None
    bad = ~((values == 0) | (values == 1))  # NaN is neither
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise PcamflowError(
            f"{path}: {int(bad.sum())} labels outside {{0, 1}} (first: {values[first].item()!r} at row {first})"
        )
    return values.astype(np.uint8)
