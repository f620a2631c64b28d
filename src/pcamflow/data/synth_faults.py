"""The poisoned course-style copy: which tiles get which fault (NaN, inf, out-of-range values,
black and white tiles), which train tiles become copies of test tiles, which tiles are copies of
another tile of their own split, which are under-exposed (dark), and planting them.

Dark tiles are no fault the audit flags: they are tissue scanned too dark, kept by prepare with
their labels, so the intensity slices show how the model does on them."""

from __future__ import annotations

import numpy as np

from pcamflow.constants import FAULTS, SPLITS
from pcamflow.data.synth_tissue import POISON_STREAM, stream

FAULT_FRACTION = {"nan": 0.005, "inf": 0.005, "out_of_range": 0.01, "black": 0.005, "white": 0.005}
DUPLICATES = 5  # train copies of test tiles in the poisoned copy
WITHIN_DUPLICATES = 3  # per split: tiles that are copies of another tile of the same split
DARK_FRACTION = 0.04  # under-exposed tiles per split (enough to fill the slices' dark bin)
DARK_MEAN = (0.12, 0.3)  # their mean intensity, as a fraction of full scale (slices.dark: 0.35)


def plan_poison(seed: int, sizes: dict[str, int]) -> dict:
    """Which tiles get which fault, and which train tiles become copies of test tiles.

    Every tile gets at most one fault; duplicates (across and within splits) and dark tiles are
    planted on tiles without one, each tile in one role at most."""
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
        clean[split] = list(order[used:])
    k = min(DUPLICATES, len(clean["train"]), len(clean["test"]))
    duplicates = [
        {"split_a": "train", "index_a": int(a), "split_b": "test", "index_b": int(b)}
        for a, b in sorted(zip(_take(clean["train"], k), _take(clean["test"], k)))
    ]
    within, dark = [], {}
    for split in SPLITS:
        k = min(WITHIN_DUPLICATES, len(clean[split]) // 2)
        pairs = zip(_take(clean[split], k), _take(clean[split], k))
        # the copy comes after its original, so a writer going through the split in order has it
        within += [{"split": split, "index": max(p), "copy_of": min(p)} for p in map(sorted, pairs)]
        k = min(round(DARK_FRACTION * sizes[split]), len(clean[split]))
        dark[split] = sorted(int(i) for i in _take(clean[split], k))
    return {
        "poison": True,
        "seed": seed,
        "splits": splits,
        "cross_split_duplicates": duplicates,
        "within_split_duplicates": sorted(within, key=lambda d: (SPLITS.index(d["split"]), d["index"])),
        "dark": dark,
    }


def _take(pool: list, k: int) -> list[int]:
    """The first k indices of a pool of unused tiles, removed from it."""
    taken = [int(i) for i in pool[:k]]
    del pool[:k]
    return taken


def clean_record(seed: int) -> dict:
    """The planted record of clean data: nothing planted."""
    splits = {split: {fault: [] for fault in FAULTS} for split in SPLITS}
    return {
        "poison": False,
        "seed": seed,
        "splits": splits,
        "cross_split_duplicates": [],
        "within_split_duplicates": [],
        "dark": {split: [] for split in SPLITS},
    }


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


def _darken(tile: np.ndarray, rng: np.random.Generator) -> None:
    """Under-expose a float32 tile in place: scaled to a mean intensity drawn from DARK_MEAN."""
    tile *= np.float32(rng.uniform(*DARK_MEAN) * 255 / max(float(tile.mean()), 1.0))


def poison_block(
    x: np.ndarray, start: int, planted: dict, seed: int, split: str, dark: list[int] = ()
) -> np.ndarray:
    """float32 copy of a block with this block's planted faults and dark tiles."""
    out = x.astype(np.float32)
    for fault, indices in [*planted.items(), ("dark", dark)]:
        for i in indices:
            if start <= i < start + len(x):
                rng = stream(seed, POISON_STREAM, SPLITS.index(split), i)
                if fault == "dark":
                    _darken(out[i - start], rng)
                else:
                    _apply_fault(out[i - start], fault, rng)
    return out
