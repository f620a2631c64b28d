"""The prepared store: the clean uint8 copy of every split that training and evaluation read.

Layout of a store directory (written by `pcamflow.data.prepare`):
    {split}_x.npy      uint8  (N, 96, 96, 3)  cleaned tiles
    {split}_y.npy      uint8  (N,)            labels in {0, 1}
    {split}_index.npy  int64  (N,)            row of each tile in the raw PCAM file
    stats.json         train-only per-channel mean/std on the [0, 1] scale, and counts
    manifest.json      sha256 of every file above, and one checksum of the whole store
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamflow.errors import PcamflowError
from pcamflow.io import read_json

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
    x = np.load(paths["x"], mmap_mode="r" if mmap else None)
    return Split(x=x, y=np.load(paths["y"]), index=np.load(paths["index"]))


def load_stats(store_dir: str | os.PathLike) -> dict:
    path = Path(store_dir) / STATS_FILE
    if not path.exists():
        raise PcamflowError(f"{path}: prepared data statistics missing (run the prepare rule first)")
    return read_json(path)


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
