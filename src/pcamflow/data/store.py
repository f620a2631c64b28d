"""The prepared store: the clean uint8 copy of every split that training and evaluation read.

Layout of a store directory (written by `pcamflow.data.prepare`):
    {split}_x.npy      uint8  (N, 96, 96, 3)  cleaned tiles
    {split}_y.npy      uint8  (N,)            labels in {0, 1}
    {split}_index.npy  int64  (N,)            row of each tile in the raw PCAM file
    stats.json         train-only per-channel mean/std on the [0, 1] scale, and counts
    manifest.json      sha256 of every file above, and one checksum of the whole store
    verified.json      when each file last matched its sha256: its size, mtime, ctime and inode then
                       (a cache of verify_store's work; not part of the store, never copied)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamflow.constants import TILE_SHAPE
from pcamflow.errors import DataChanged, PcamflowError, first_line
from pcamflow.experiment import check_store_checksum, trained_store
from pcamflow.io import read_json, sha256sum, write_json

STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.json"
VERIFIED_FILE = "verified.json"
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
    verified. Anything wrong is one PcamflowError naming the file (DataChanged for a file whose
    bytes differ from the manifest).

    Cost: a file is hashed (one sequential read) only when its stat differs from the one recorded in
    verified.json when it last matched its sha256, so one full read per store content, not per job;
    the checks of shapes, dtypes and labels read headers and the small label arrays only. What the
    stat catches: any change made through the file system (a write, a truncation, a replaced file,
    a restored mtime: each moves ctime or the inode). What it cannot: bytes that change under the
    file system (a failing disk, bit rot), or a write within the same tick of the file system's clock
    (a few ms) as the verification; `rm verified.json` makes the next check hash every file again.
    docs/usage.md gives the figures.
    """
    store_dir = Path(store_dir)
    files, checksum = read_manifest(store_dir)
    for split in splits:
        _check_split_arrays(store_dir, split)
    verified = _read_verified(store_dir, checksum)
    matched = {}
    manifest_path = store_dir / MANIFEST_FILE
    for path in store_files(store_dir, splits)[:-1]:  # the manifest itself last: it is checked above
        if path.name not in files:
            raise PcamflowError(f"{path}: not listed in {manifest_path} (run the prepare rule again)")
        stat = file_stat(path)
        if verified.get(path.name) != stat:
            if sha256sum(path) != files[path.name]:
                raise DataChanged(f"{path}: {DAMAGED} (run the prepare rule again)", path)
            matched[path.name] = stat
    if matched:  # read again: another job may have recorded other files meanwhile
        record_verified(store_dir, checksum, {**_read_verified(store_dir, checksum), **matched})
    return checksum


DAMAGED = f"sha256 differs from {MANIFEST_FILE}: changed or damaged since prepare wrote it"


def check_store_before_jobs(
    store_dir: str | os.PathLike, splits, root: str | os.PathLike, *, rebuilt: bool, rebuild_only: bool
) -> None:
    """What a workflow run checks of the prepared store once, before any job (one PcamflowError line).

    A complete store must match its manifest (verify_store: a file is hashed only when its stat
    changed) and be the store root's runs were trained on (pcamflow.experiment). An incomplete one
    that runs were trained on is refused unless this run only rebuilds it (rebuild_only: --until
    prepare): Snakemake reruns every job one of whose input files is missing, so each finished run
    would be trained again. rebuilt: prepare writes the store anew in this run (--forcerun prepare,
    --forceall), so there is nothing to check yet: the preflight checks what it wrote.
    """
    if rebuilt:
        return
    missing = [path for path in store_files(store_dir, splits) if not path.exists()]
    if missing:
        if trained_store(root) and not rebuild_only:
            raise PcamflowError(
                f"{missing[0]}: missing, but the runs in {root}/ were trained on this store and "
                "Snakemake would train every finished run again to rebuild it; rebuild the store "
                "alone first (add --until prepare to this command), then run again: the finished runs "
                "are kept when the rebuilt store is identical"
            )
        return
    try:
        checksum = verify_store(store_dir, splits)
    except DataChanged as damaged:
        raise PcamflowError(
            f"{damaged.path}: {DAMAGED}; nothing was run: rebuild the store by adding --forcerun prepare "
            "to this command (the finished runs are kept when the rebuilt store is identical)"
        ) from None
    check_store_checksum(root, checksum)


def read_manifest(store_dir: Path) -> tuple[dict[str, str], str]:
    """(file name -> sha256, combined checksum) of a store's manifest, checked against itself."""
    manifest_path = Path(store_dir) / MANIFEST_FILE
    if not manifest_path.exists():
        raise PcamflowError(f"{manifest_path}: prepared data manifest missing (run the prepare rule first)")
    try:
        manifest = read_json(manifest_path)
        files, checksum = dict(manifest["files"]), manifest["checksum"]
    except (ValueError, KeyError, TypeError):
        raise PcamflowError(f"{manifest_path}: unreadable (not JSON with 'files' and 'checksum')") from None
    if combined_checksum(files) != checksum:
        raise PcamflowError(f"{manifest_path}: its checksum does not match its file list (edited by hand?)")
    return files, checksum


def file_stat(path: Path) -> list[int]:
    """What verified.json remembers of a file whose sha256 matched: size, mtime, ctime, inode. A write
    moves mtime and ctime, resetting mtime (touch -d) moves ctime, a replacement changes the inode.
    Not st_dev: it may differ between the nodes that mount one shared file system."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def record_verified(store_dir: Path, checksum: str, stats: dict[str, list[int]]) -> None:
    """Remember that these files matched the manifest of `checksum` with these stats (best effort:
    a store on a read-only file system is then hashed by every job, as before)."""
    with contextlib.suppress(OSError):
        write_json(Path(store_dir) / VERIFIED_FILE, {"checksum": checksum, "files": stats})


def _read_verified(store_dir: Path, checksum: str) -> dict[str, list[int]]:
    try:
        record = read_json(Path(store_dir) / VERIFIED_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("checksum") != checksum:
        return {}
    files = record.get("files")
    return files if isinstance(files, dict) else {}


def store_is_complete(store_dir: str | os.PathLike, splits) -> bool:
    """Whether every file of a store of `splits` is there (the manifest last: prepare moves it in last)."""
    return all(path.exists() for path in store_files(store_dir, splits))


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
