"""The prepared store: the clean uint8 copy of every split that training and evaluation read.

Layout of a store directory (written by `pcamflow.data.prepare`):
    {split}_x.npy      uint8  (N, 96, 96, 3)  cleaned tiles
    {split}_y.npy      uint8  (N,)            labels in {0, 1}
    {split}_index.npy  int64  (N,)            row of each tile in the raw PCAM file
    stats.json         train-only per-channel mean/std on the [0, 1] scale, and counts
    manifest.json      sha256 of every file above, and one checksum of the whole store
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamflow.constants import TILE_SHAPE
from pcamflow.errors import PcamflowError, first_line
from pcamflow.io import read_json, sha256sum

STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.json"
ARRAYS = ("x", "y", "index")


def array_path(store_dir: str | os.PathLike, split: str, array: str) -> Path:
    return Path(store_dir) / f"{split}_{array}.npy"


def store_files(store_dir: str | os.PathLike, splits) -> list[Path]:
    """Every file a complete store holds (Snakemake outputs of `prepare`)."""
    files = [array_path(store_dir, s, a) for s in splits for a in ARRAYS]
    return files + [Path(store_dir) / STATS_FILE, Path(store_dir) / MANIFEST_FILE]


@dataclass
class Split:
    x: np.ndarray  # (N, 96, 96, 3) uint8, in memory or memory-mapped
    y: np.ndarray  # (N,) uint8
    index: np.ndarray  # (N,) int64, row in the raw file

    def __len__(self) -> int:
        return len(self.y)


def load_split(store_dir: str | os.PathLike, split: str, mmap: bool | None = None) -> Split:
    """Load one split. mmap=None memory-maps x when it would not fit in half the free memory."""
    paths = {a: array_path(store_dir, split, a) for a in ARRAYS}
    for path in paths.values():
        if not path.exists():
            raise PcamflowError(f"{path}: prepared data missing (run the prepare rule first)")
    if mmap is None:
        mmap = paths["x"].stat().st_size > _available_memory() // 2
    x = _load(paths["x"], mmap_mode="r" if mmap else None)
    return Split(x=x, y=_load(paths["y"]), index=_load(paths["index"]))


def _load(path: Path, mmap_mode=None) -> np.ndarray:
    """np.load without pickles; a damaged file is one line naming it (verify_store says more)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise PcamflowError(f"{path}: unreadable prepared array ({first_line(err)})") from None


def load_stats(store_dir: str | os.PathLike) -> dict:
    path = Path(store_dir) / STATS_FILE
    if not path.exists():
        raise PcamflowError(f"{path}: prepared data statistics missing (run the prepare rule first)")
    return read_json(path)


def combined_checksum(files: dict[str, str]) -> str:
    """The store's one checksum: sha256 over the sorted `name digest` lines of its files."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def verify_store(store_dir: str | os.PathLike, splits) -> str:
    """Check what a job reads of the store (the arrays of `splits` and stats.json) against
    manifest.json, then the arrays' shapes, dtypes and labels; return the store's checksum, now
    verified. Anything wrong is one PcamflowError naming the file.

    Cost: one sha256 pass over the files read (a sequential read; docs/usage.md gives the figures), paid
    once per job that trains or evaluates; the checks of shapes, dtypes and labels read headers and
    the small label arrays only.
    """
    store_dir = Path(store_dir)
    manifest_path = store_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise PcamflowError(f"{manifest_path}: prepared data manifest missing (run the prepare rule first)")
    try:
        manifest = read_json(manifest_path)
        files, checksum = dict(manifest["files"]), manifest["checksum"]
    except (ValueError, KeyError, TypeError):
        raise PcamflowError(f"{manifest_path}: unreadable (not JSON with 'files' and 'checksum')") from None
    if combined_checksum(files) != checksum:
        raise PcamflowError(f"{manifest_path}: its checksum does not match its file list (edited by hand?)")
    for split in splits:
        _check_split_arrays(store_dir, split)
    for path in store_files(store_dir, splits)[:-1]:  # the manifest itself last: it is checked above
        if path.name not in files:
            raise PcamflowError(f"{path}: not listed in {manifest_path} (run the prepare rule again)")
        if sha256sum(path) != files[path.name]:
            raise PcamflowError(
                f"{path}: sha256 differs from {MANIFEST_FILE}: changed or damaged since prepare wrote it "
                "(run the prepare rule again)"
            )
    return checksum


# what each array of a split must be: dtype and shape after the tile count
_ARRAY_FORMAT = {"x": (np.uint8, TILE_SHAPE), "y": (np.uint8, ()), "index": (np.int64, ())}


def _check_split_arrays(store_dir: Path, split: str) -> None:
    """Headers, sizes and dtypes of a split's three .npy files, and labels in {0, 1}."""
    counts = {}
    for name, (dtype, tail) in _ARRAY_FORMAT.items():
        path = array_path(store_dir, split, name)
        shape, found = _npy_shape(path)
        if found != np.dtype(dtype) or tuple(shape[1:]) != tuple(tail) or len(shape) != 1 + len(tail):
            raise PcamflowError(
                f"{path}: holds {found} {tuple(shape)}, expected {np.dtype(dtype)} (N, {', '.join(map(str, tail))})".replace(
                    ", )", ")"
                )
            )
        counts[name] = shape[0]
    if len(set(counts.values())) != 1:
        raise PcamflowError(
            f"{array_path(store_dir, split, 'y')}: {counts['y']} labels for {counts['x']} tiles and "
            f"{counts['index']} indices (a file was cut short or replaced; run the prepare rule again)"
        )
    path = array_path(store_dir, split, "y")
    labels = np.unique(np.load(path, allow_pickle=False))
    if not np.isin(labels, (0, 1)).all():
        raise PcamflowError(f"{path}: labels {labels.tolist()}; PCAM labels are 0 and 1")


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, checking the file is as long as the header says."""
    if not path.exists():
        raise PcamflowError(f"{path}: prepared data missing (run the prepare rule first)")
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(fh)
            header_end = fh.tell()
    except (ValueError, OSError, EOFError) as err:
        raise PcamflowError(f"{path}: not a readable .npy file ({first_line(err)})") from None
    if dtype.hasobject:
        raise PcamflowError(f"{path}: holds Python objects (an object array), not numbers; refused")
    expected = header_end + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise PcamflowError(
            f"{path}: {size} bytes, but its header promises {expected} ({'truncated' if size < expected else 'extra bytes'})"
        )
    return tuple(shape), dtype


def store_checksum(store_dir: str | os.PathLike) -> str:
    """One checksum of the whole store, as recorded by prepare in its manifest."""
    path = Path(store_dir) / MANIFEST_FILE
    if not path.exists():
        raise PcamflowError(f"{path}: prepared data manifest missing (run the prepare rule first)")
    return read_json(path)["checksum"]


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
