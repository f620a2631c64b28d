"""Small model bundles and synthetic tiles for the export, predict, drift and bundle tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from pcamflow.config import validate_config
from pcamflow.data.synth_tiles import generate_split
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


def _cell(value, std=None, low=None, high=None, undefined=None) -> dict:
    cell = {"value": value, "std": std, "ci_low": low, "ci_high": high}
    return cell if undefined is None else {**cell, "undefined": undefined}


def card_inputs(*, dataset: str = "synthetic", tta: bool = False, git: dict | None = None) -> dict:
    """model_card's arguments as export_champion builds them, shaped like the test config's outputs:
    two seeds, a majority-class baseline with an undefined precision, and test slices of which one
    is weak, one too small to judge and one empty."""
    import pandas as pd

    def at(threshold, accuracy, recall, std=None):
        return {
            "threshold": threshold,
            "accuracy": _cell(accuracy, std, accuracy - 0.05, accuracy + 0.05),
            "recall": _cell(recall, std, recall - 0.05, recall + 0.05),
        }

    seed = 2
    evaluation = {
        "seeds": [1, seed],
        "predictions": "plain (no TTA)",
        "test": {"n": 200, "positives": 100, "negatives": 100},
        "bootstrap": {"resamples": 50, "ci": 0.95},
        "metrics": {
            "champion": {
                "mean": {
                    "0.5": at(0.5, 0.6075, 0.61, std=0.0318),
                    "validation": at(0.0404, 0.595, 0.9, 0.02),
                },
                "seed 1": {"0.5": at(0.5, 0.585, 0.6)},
                f"seed {seed}": {"0.5": at(0.5, 0.63, 0.62), "validation": at(0.0753, 0.58, 0.92)},
            },
            "majority class (negative in train)": {
                "model": {
                    "0.5": {
                        "threshold": 0.5,
                        "accuracy": _cell(0.5, None, 0.42, 0.54),
                        "precision": _cell(None, undefined="no predicted positives"),
                    }
                }
            },
        },
    }
    columns = [
        "family",
        "slice",
        "n",
        "positives",
        "accuracy",
        "recall",
        "precision",
        "f2",
        "roc_auc",
        "undefined",
    ]
    nan = float("nan")
    slices = pd.DataFrame(
        [
            ["all", "all tiles", 200, 100, 0.58, 0.92, 0.55, 0.81, 0.65, nan],
            ["intensity", "dark (< 0.35)", 0, 0, nan, nan, nan, nan, nan, "accuracy, recall: no samples"],
            ["intensity", "middle (0.35 to 0.75)", 130, 76, 0.57, 0.92, 0.58, 0.83, 0.58, nan],
            ["intensity", "bright (> 0.75)", 64, 24, 0.60, 0.75, 0.46, 0.76, 0.70, nan],
            ["stain", "pale", 6, 3, 0.10, 0.20, 0.30, 0.40, 0.50, nan],
        ],
        columns=columns,
    )
    return {
        "metadata": {
            "champion": "model~mlp/lr~0.001",
            "grid_point": {"model": "mlp", "lr": 0.001},
            "seed": seed,
            "best_epoch": 1,
            "tta": tta,
            "threshold_rule": "highest threshold reaching recall >= 0.9 on validation",
            "dataset": dataset,
            "data_checksum": "0123abcd",
            "git": git,
        },
        "champion": {"rule": "best mean val_auc", "n_params": 884834, "ranking": [{}, {}]},
        "evaluation": evaluation,
        "slices": slices,
        "run_config": {
            "training": {"epochs": 2, "scheduler": "cosine", "amp": "none", "selection_metric": "val_auc"}
        },
        "stats": {
            "mean": [0.797, 0.6297, 0.7787],
            "std": [0.1651, 0.1785, 0.1115],
            "counts": {"train": {"kept": 598, "dropped_total": 2}, "test": {"kept": 200, "dropped_total": 0}},
        },
        "threshold": 0.0753,
    }
