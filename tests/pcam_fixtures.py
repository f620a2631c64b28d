"""Tiny PCAM-format H5 files written by the tests themselves (no generator needed)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants


def random_tiles(n: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """n distinct tissue-like tiles, never black or white (values 20..235)."""
    rng = np.random.default_rng(seed)
    return rng.integers(20, 236, size=(n, *constants.TILE_SHAPE)).astype(dtype)


def alternating_labels(n: int) -> np.ndarray:
    return (np.arange(n) % 2).astype(np.uint8)


def write_dataset(path: Path, key: str, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(key, data=array, **kwargs)
    return path


def write_split(
    raw_dir: Path, split: str, x: np.ndarray, y: np.ndarray, y_shape=(1, 1, 1)
) -> tuple[Path, Path]:
    """Write one split as PCAM does: keys x and y, y of shape (N, 1, 1, 1)."""
    x_path = write_dataset(raw_dir / constants.raw_filename(split, "x"), constants.X_KEY, x)
    y_path = write_dataset(
        raw_dir / constants.raw_filename(split, "y"), constants.Y_KEY, y.reshape(len(y), *y_shape)
    )
    return x_path, y_path


def write_raw_dir(raw_dir: Path, sizes: dict[str, int], dtype=np.uint8, seed: int = 0) -> dict[str, tuple]:
    """Every split, with distinct tiles across splits; returns {split: (x, y)} as written."""
    written = {}
    for i, (split, n) in enumerate(sizes.items()):
        x, y = random_tiles(n, seed=seed * 10 + i, dtype=dtype), alternating_labels(n)
        write_split(raw_dir, split, x, y)
        written[split] = (x, y)
    return written
