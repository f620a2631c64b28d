"""The poisoned course-style copy: which tiles get which fault (NaN, inf, out-of-range values,
black and white tiles) and which train tiles become copies of test tiles, and planting them."""

from __future__ import annotations

import numpy as np

from pcamflow.constants import FAULTS, SPLITS
from pcamflow.data.synth_tissue import POISON_STREAM, stream

FAULT_FRACTION = {"nan": 0.005, "inf": 0.005, "out_of_range": 0.01, "black": 0.005, "white": 0.005}
DUPLICATES = 5  # train copies of test tiles in the poisoned copy


def plan_poison(seed: int, sizes: dict[str, int]) -> dict:
    """Which tiles get which fault, and which train tiles become copies of test tiles.

    Every tile gets at most one fault; duplicates are planted on tiles without one."""
    rng = stream(seed, POISON_STREAM)
    splits, clean = {}, {}
    for split in SPLITS:
        n = sizes[split]
        order = rng.permutation(n)
        planted, used = {}, 0
        for fault in FAULTS:
            k = min(max(1, round(FAULT_FRACTION[fault] * n)), max(0, n - used - 1))
            planted[fault] = sorted(int(i) for i in order[used : used + k])
            used += k
        splits[split] = planted
        clean[split] = order[used:]
    k = min(DUPLICATES, len(clean["train"]), len(clean["test"]))
    duplicates = [
        {"split_a": "train", "index_a": int(a), "split_b": "test", "index_b": int(b)}
        for a, b in sorted(zip(clean["train"][:k], clean["test"][:k]))
    ]
    return {"poison": True, "seed": seed, "splits": splits, "cross_split_duplicates": duplicates}


def clean_record(seed: int) -> dict:
    """The planted record of clean data: nothing planted."""
    splits = {split: {fault: [] for fault in FAULTS} for split in SPLITS}
    return {"poison": False, "seed": seed, "splits": splits, "cross_split_duplicates": []}


def _apply_fault(tile: np.ndarray, fault: str, rng: np.random.Generator) -> None:
    """Plant one fault into a float32 tile in place."""
    pixels = tile.reshape(-1, 3)
    some = rng.choice(len(pixels), int(rng.integers(20, 400)), replace=False)
    if fault == "nan":
        pixels[some, rng.integers(0, 3, len(some))] = np.nan
    elif fault == "inf":
        pixels[some, rng.integers(0, 3, len(some))] = rng.choice([np.inf, -np.inf], len(some))
    elif fault == "out_of_range":
        # far above 255 and below 0, like a bad rescaling
        values = rng.uniform(300, 20_000, len(some)) * rng.choice([1, -1], len(some))
        values[:2] = [rng.uniform(300, 20_000), -rng.uniform(1, 20_000)]
        pixels[some, rng.integers(0, 3, len(some))] = values
    elif fault == "black":
        tile[...] = 0
    elif fault == "white":
        tile[...] = 255


def poison_block(x: np.ndarray, start: int, planted: dict, seed: int, split: str) -> np.ndarray:
    """float32 copy of a block with this block's planted faults."""
    out = x.astype(np.float32)
    for fault, indices in planted.items():
        for i in indices:
            if start <= i < start + len(x):
                _apply_fault(out[i - start], fault, stream(seed, POISON_STREAM, SPLITS.index(split), i))
    return out
