"""Where an experiment's results live: its results root, run and state directories, training logs.

rules/common.smk builds every workflow path from these, and `pcamflow status` reads the same
places. The default experiment keeps `results/` itself; any other lives in `results/<name>/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pcamflow.errors import PcamflowError
from pcamflow.rundir import point_pattern, seed_dir

RESULTS = Path("results")
DEFAULT_EXPERIMENT = "default"
# The record of what an experiment's results were made with (pcamflow.experiment), in its root.
EXPERIMENT_FILE = "experiment.json"
# What a results root holds at its top level: the first level of the path table. rules/common.smk
# builds every path on these (root_entry refuses any other), so the names an experiment may not take
# (it would nest inside the default experiment's folders) are the table's own.
ROOT_ENTRIES = (
    "audit",
    "benchmarks",
    "bundle",
    "data",
    "evaluation",
    EXPERIMENT_FILE,
    "handover.tar.gz",
    "logs",
    "preflight",
    "prepared",
    "reproducibility",
    "runs",
    "state",
    "summary",
    "tensorboard",
    "throughput",
)


def root_entry(root: Path, name: str, *parts: str) -> Path:
    """root/name/parts: a path of the table under one of the results root's entries."""
    if name not in ROOT_ENTRIES:
        raise ValueError(f"{name!r} is not an entry of a results root (pcamflow.layout.ROOT_ENTRIES)")
    return Path(root, name, *parts)


def results_root(experiment: str) -> Path:
    """results/ for the default experiment, results/<experiment>/ for any other."""
    if experiment == DEFAULT_EXPERIMENT:
        return RESULTS
    if experiment in ROOT_ENTRIES:
        raise PcamflowError(
            f"config key 'experiment': {experiment!r} is the name of a folder in results/; choose another name"
        )
    return RESULTS / experiment


def run_dir_pattern(root: Path, grid_keys: Sequence[str]) -> str:
    """A training run's directory; wildcards: the grid keys and seed."""
    return str(root_entry(root, "runs", point_pattern(grid_keys), seed_dir("{seed}")))


def state_dir_pattern(root: Path, grid_keys: Sequence[str]) -> str:
    """A training run's resume checkpoints: outside its outputs, so a failed job's clean-up keeps them."""
    return str(root_entry(root, "state", point_pattern(grid_keys), seed_dir("{seed}")))


def train_log_pattern(root: Path, grid_keys: Sequence[str]) -> str:
    """A training job's log (all its attempts append to it)."""
    return str(root_entry(root, "logs", "train", point_pattern(grid_keys), seed_dir("{seed}") + ".log"))


def run_dir(root: Path, point: dict, seed: int) -> Path:
    """The run directory of one grid point (its keys in grid order) and seed."""
    return Path(run_dir_pattern(root, list(point)).format(**point, seed=seed))


def train_log(root: Path, point: dict, seed: int) -> Path:
    return Path(train_log_pattern(root, list(point)).format(**point, seed=seed))
