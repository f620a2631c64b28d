"""A tiny prepared store written directly in the store format, with a learnable signal.

Positive tiles carry a brighter blob in the centre 32 x 32 region (PCAM's label rule), so a few
steps of a tiny model already separate the classes; the training tests need no generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pcamflow import constants
from pcamflow.data.store import MANIFEST_FILE, STATS_FILE, array_path, combined_checksum
from pcamflow.io import sha256sum, write_json


def centre_signal_tiles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.uint8)
    rng.shuffle(y)
    x = rng.integers(40, 200, size=(n, *constants.TILE_SHAPE), dtype=np.uint8)
    lo = (constants.TILE_SHAPE[0] - constants.CENTRE) // 2
    centre = x[:, lo : lo + constants.CENTRE, lo : lo + constants.CENTRE]
    centre[y == 1] = np.clip(centre[y == 1].astype(np.int16) + 50, 0, 255).astype(np.uint8)
    return x, y


def write_store(store_dir: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A complete prepared store (arrays, train-only stats, manifest with checksum)."""
    sizes = sizes or {"train": 200, "valid": 64, "test": 64}
    store_dir.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        x, y = centre_signal_tiles(n, seed * 10 + i)
        arrays = {"x": x, "y": y, "index": np.arange(n, dtype=np.int64)}
        for name, array in arrays.items():
            np.save(array_path(store_dir, split, name), array)
        if split == "train":
            scaled = x.reshape(-1, 3) / 255.0
            stats = {"mean": scaled.mean(0).tolist(), "std": scaled.std(0).tolist(), "n_tiles": n}
    write_json(store_dir / STATS_FILE, stats)
    return write_manifest(store_dir)


def write_manifest(store_dir: Path) -> Path:
    """manifest.json as prepare writes it: sha256 of every file and their combined checksum."""
    files = {p.name: sha256sum(p) for p in sorted(store_dir.iterdir()) if p.name != MANIFEST_FILE}
    write_json(store_dir / MANIFEST_FILE, {"checksum": combined_checksum(files), "files": files})
    return store_dir
