"""The run-directory contract: what one training run writes, how its grid point is spelled, and
which validation metrics it records. The rules, the trainer, aggregation, export and the
reproducibility check all read these names from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

# ---- the files of a run directory (results/runs/<grid point>/seed~N/) ----
HISTORY = "history.json"  # per-epoch and per-step records, best epoch
METRICS = "metrics.csv"  # one row per epoch (EPOCH_FIELDS)
RUN_INFO = "run.json"  # provenance: config, versions, git, data checksum
BEST_CHECKPOINT = "checkpoint_best.pt"  # weights at the best epoch by the selection metric
LAST_CHECKPOINT = "checkpoint_last.pt"  # full training state at the end (resume, twin comparison)
TENSORBOARD = "tensorboard"  # event files of the run
RUN_FILES = (HISTORY, METRICS, RUN_INFO, BEST_CHECKPOINT, LAST_CHECKPOINT)

# ---- how a grid point and a seed are spelled in paths: model~cnn/lr~0.001/.../seed~42 ----
SEP = "~"


def point_pattern(grid_keys: Sequence[str]) -> str:
    """The wildcard pattern of a grid point: 'model~{model}/lr~{lr}/...' (one directory per key)."""
    return "/".join(f"{key}{SEP}{{{key}}}" for key in grid_keys)


def point_id(point: Mapping, grid_keys: Sequence[str]) -> str:
    """A grid point as the run directories spell it: 'model~cnn/lr~0.001/...'."""
    return point_pattern(grid_keys).format(**{key: point[key] for key in grid_keys})


def seed_dir(seed: int | str) -> str:
    return f"seed{SEP}{seed}"


# ---- validation metrics: recorded every epoch, averaged over seeds, selectable ----
class ValMetric(NamedTuple):
    name: str  # the key in history.json, metrics.csv and metrics_avg.csv
    score: str  # its key in pcamflow.metrics.binary_metrics
    label: str  # axis label in the curves
    panel: str  # which panel of the per-epoch curves shows it


# in the order of the epoch records (history.json, metrics.csv)
SCORED = (
    ValMetric("val_accuracy", "accuracy", "val accuracy", "threshold 0.5"),
    ValMetric("val_f2", "f2", "val F2", "threshold 0.5"),
    ValMetric("val_auc", "roc_auc", "val ROC-AUC", "ranking"),
    ValMetric("val_pr_auc", "pr_auc", "val PR-AUC", "ranking"),
)
VAL_LOSS = "val_loss"
PANELS = ("loss", "ranking", "threshold 0.5")  # left to right
# every validation metric a run records; any of them can pick the best checkpoint
# (training.selection_metric) and the champion (champion.metric)
VAL_METRICS = (*(m.name for m in SCORED), VAL_LOSS)
LOWER_IS_BETTER = frozenset({VAL_LOSS})
EPOCH_FIELDS = ("epoch", "train_loss", VAL_LOSS, *(m.name for m in SCORED), "lr", "epoch_time_s", "img_per_s")
TIMING_FIELDS = ("epoch_time_s", "img_per_s")  # the only fields that differ between twin runs


def epoch_panels() -> tuple[tuple[str, list[tuple[str, str]]], ...]:
    """(panel title, [(history key, label)]) of the per-epoch curves, in PANELS order."""
    series = {"loss": [("train_loss", "train"), (VAL_LOSS, "validation")]}
    for metric in SCORED:
        series.setdefault(metric.panel, []).append((metric.name, metric.label))
    return tuple((panel, series[panel]) for panel in PANELS)
