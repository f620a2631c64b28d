"""Input drift: compare the intensities of tiles sent to a model with those it was trained on.

The reference is the exact per-channel value histogram (3 x 256 counts) of the train split; the
input side is accumulated batch by batch while predicting. Two numbers per channel decide:

- `w1`: the Wasserstein-1 (earth mover's) distance between the input's and the reference's
  intensity distributions, on the [0, 1] scale: how far, on average, intensity mass has to move.
  A uniform shift of every value by d gives w1 = d, so 0.05 means about 13 grey levels.
- `std_ratio`: input std / reference std, the change in contrast that a shift-only view misses.

Drift is reported when any channel's w1 exceeds `w1_max` or its std_ratio leaves
[1 / std_ratio_max, std_ratio_max] (config `export.drift`, stored in the bundle).

A small input differs from the training data by chance: w1 between a random batch of n
in-distribution tiles and the reference reaches about SAMPLING_NOISE / sqrt(n) (on the synthetic
data, the 99th percentile of random batches of 8-100 test tiles stays below it). So an input of
`min_tiles_gross` up to `min_tiles` tiles is judged on gross changes only: w1 above
w1_max + SAMPLING_NOISE / sqrt(n) (0.09 at 25 tiles), std ratio not used (too noisy). A stain
change that halves the optical density moves w1 by 0.09-0.13, visible in a couple of dozen tiles.
Fewer than `min_tiles_gross` tiles are too small to judge, and the summary says so.

Defaults (0.05, 1.25, 100 tiles): on the synthetic data, the test split is 0.006 from train and
random 32-tile batches of it at most 0.043; a 15% change of one channel's gain gives 0.10, and
a stain or scanner change typically moves channel means by 0.05-0.15 of full scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcamflow.data.rawdata import channel_histograms, histogram_moments

CHANNELS = ("R", "G", "B")
SAMPLING_NOISE = 0.2  # w1 of n random in-distribution tiles stays below this / sqrt(n) (see above)
MIN_TILES_GROSS = 16  # default of export.drift.min_tiles_gross, for bundles made before it existed
LEVELS = 256


class HistogramAccumulator:
    """Per-channel value counts of uint8 NHWC tiles, summed over batches."""

    def __init__(self):
        self.counts = np.zeros((len(CHANNELS), LEVELS), dtype=np.int64)
        self.n_tiles = 0

    def update(self, tiles: np.ndarray) -> None:
        if len(tiles):
            self.counts += channel_histograms(tiles)
            self.n_tiles += len(tiles)


def wasserstein1(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """Per-channel Wasserstein-1 distance on the [0, 1] scale between two (3, 256) histograms."""
    cdf_a = np.cumsum(counts_a / counts_a.sum(axis=1, keepdims=True), axis=1)
    cdf_b = np.cumsum(counts_b / counts_b.sum(axis=1, keepdims=True), axis=1)
    return np.abs(cdf_a - cdf_b).sum(axis=1) / (LEVELS - 1)


def make_reference(counts: np.ndarray, n_tiles: int, thresholds: dict) -> dict:
    """The drift reference a bundle stores: train histogram, its moments and the thresholds
    (the config's `export.drift`, whose defaults and meaning the schema gives)."""
    mean, std = histogram_moments(counts)
    return {
        "computed_on": "train split of the prepared store",
        "n_tiles": int(n_tiles),
        "channels": list(CHANNELS),
        "scale": "value / 255",
        "mean": mean.tolist(),
        "std": std.tolist(),
        "histogram": np.asarray(counts, dtype=np.int64).tolist(),
        "thresholds": dict(thresholds),
        "distance": "per-channel Wasserstein-1 of the intensity histogram (w1) and std ratio",
    }


@dataclass
class DriftReport:
    n_tiles: int
    checked: bool  # False when there were too few tiles to judge
    gross_only: bool = False  # a small input: only w1 against a limit widened by sampling noise
    min_tiles: int = 0  # the full check's minimum (shown when an input is too small)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    w1: list[float] = field(default_factory=list)
    std_ratio: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # one per channel and criterion exceeded

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def summary(self) -> str:
        if not self.checked:
            return (
                f"drift check skipped: {self.n_tiles} tiles are too few to compare with the training data "
                "(an input too small to judge: no drift warning either way)"
            )
        scope = (
            f" (a small input, fewer than {self.min_tiles} tiles: judged on gross changes only)"
            if self.gross_only
            else ""
        )
        numbers = "; ".join(
            f"{c}: mean {m:.3f}, std {s:.3f}, w1 {w:.3f}, std ratio {r:.2f}"
            for c, m, s, w, r in zip(CHANNELS, self.mean, self.std, self.w1, self.std_ratio)
        )
        if not self.drifted:
            return f"drift check passed on {self.n_tiles} tiles{scope} ({numbers})"
        return (
            f"DRIFT WARNING: the input's intensities differ from the training data "
            f"({', '.join(self.reasons)}); predictions may be unreliable. Input on {self.n_tiles} tiles{scope}: "
            f"{numbers}"
        )


def compare(reference: dict, counts: np.ndarray, n_tiles: int) -> DriftReport:
    """Compare input histogram counts with a bundle's drift reference (see module docstring)."""
    limits = reference["thresholds"]
    gross_only = n_tiles < limits["min_tiles"]
    if n_tiles < min(limits.get("min_tiles_gross", MIN_TILES_GROSS), limits["min_tiles"]) or n_tiles == 0:
        return DriftReport(n_tiles=n_tiles, checked=False, min_tiles=limits["min_tiles"])
    w1_max = limits["w1_max"] + (SAMPLING_NOISE / np.sqrt(n_tiles) if gross_only else 0.0)
    ref_counts = np.asarray(reference["histogram"], dtype=np.int64)
    ref_mean, ref_std = histogram_moments(ref_counts)
    mean, std = histogram_moments(counts)
    w1 = wasserstein1(counts, ref_counts)
    ratio = std / np.maximum(ref_std, 1e-12)
    reasons = []
    for c, channel in enumerate(CHANNELS):
        if w1[c] > w1_max:
            reasons.append(
                f"{channel} w1 {w1[c]:.3f} > {w1_max:.3g} (mean {mean[c]:.3f} vs train {ref_mean[c]:.3f})"
            )
        if not gross_only and not 1 / limits["std_ratio_max"] <= ratio[c] <= limits["std_ratio_max"]:
            reasons.append(
                f"{channel} std ratio {ratio[c]:.2f} outside [{1 / limits['std_ratio_max']:.2f}, "
                f"{limits['std_ratio_max']}] (std {std[c]:.3f} vs train {ref_std[c]:.3f})"
            )
    return DriftReport(
        n_tiles=n_tiles,
        checked=True,
        gross_only=gross_only,
        min_tiles=limits["min_tiles"],
        mean=mean.tolist(),
        std=std.tolist(),
        w1=w1.tolist(),
        std_ratio=ratio.tolist(),
        reasons=reasons,
    )
