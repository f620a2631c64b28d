"""Small model bundles and synthetic tiles for the export, predict, drift and bundle tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from pcamflow.config import validate_config
from pcamflow.data.synthesize import generate_split
from pcamflow.deployment.drift import HistogramAccumulator, histogram_moments, make_reference
from pcamflow.deployment.export import write_bundle
from pcamflow.training.models import build_model


@functools.cache
def synthetic_tiles(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (n, 96, 96, 3), y) of the embedded synthetic generator (seed 0), cached per process."""
    blocks = [block for _, block in generate_split(0, split, n)]
    return np.concatenate([b.x for b in blocks]), np.concatenate([b.y for b in blocks])


def drift_thresholds() -> dict:
    """The config schema's defaults of export.drift."""
    return validate_config({})["export"]["drift"]


def stats_of(tiles: np.ndarray) -> dict:
    histogram = HistogramAccumulator()
    histogram.update(tiles)
    mean, std = histogram_moments(histogram.counts)
    return {"mean": mean.tolist(), "std": std.tolist()}


def tiny_model(name: str = "cnn", seed: int = 0) -> torch.nn.Module:
    """An untrained but deterministic model whose batch-norm statistics are not the identity."""
    torch.manual_seed(seed)
    model = build_model(name, {"cnn_width": 4, "mlp_hidden": [8]})
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def make_bundle(out_dir: Path, *, model=None, threshold: float = 0.5, n_train: int = 256) -> Path:
    """A complete bundle whose statistics and drift reference come from synthetic train tiles."""
    train, _ = synthetic_tiles("train", n_train)
    histogram = HistogramAccumulator()
    histogram.update(train)
    write_bundle(
        out_dir,
        model=model if model is not None else tiny_model(),
        stats=stats_of(train),
        threshold=threshold,
        reference=make_reference(histogram.counts, histogram.n_tiles, drift_thresholds()),
        card="# Model card\n\n(test bundle)\n",
        metadata={"model": "cnn"},
    )
    return out_dir
