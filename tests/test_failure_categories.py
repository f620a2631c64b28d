"""A failure that is not the run's own (a damaged cache, a full disk, a missing module, the node) is
recorded as such beside its reason, and the summaries say so (issue 21 item 5); a damaged store is
never recorded as a run's failure at all."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pcamflow import errors
from pcamflow.evaluation.aggregate import runs_table
from pcamflow.evaluation.overview import failed_run_lines, retry_command
from pcamflow.evaluation.status import run_status
from pcamflow.layout import run_dir
from pcamflow.training import attempt, train
from pcamflow.training.loop import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
POINT = {"model": "cnn", "lr": 0.001, "batch_size": 32, "optimizer": "adam"}

# Run in a process of its own: compile the CPU accelerator's loop into a fresh numba cache, or load
# it from there through numba alone (the accelerator itself recompiles a damaged cache: its tests)
KERNEL_CALL = """
from pcamflow.data import cpu_accelerator
from pcamflow.training.attempt import failure_category, failure_reason
try:
    cpu_accelerator._each_tile.compile(cpu_accelerator.SIGNATURES[0])
    print("ran")
except Exception as exc:
    print(failure_category(exc), failure_reason(exc))
"""


@pytest.mark.slow  # compiles the pass into a fresh cache, in fresh processes
def test_a_damaged_compiled_code_cache_is_no_failure_of_the_run(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(REPO / "src"))

    def call() -> str:
        done = subprocess.run([sys.executable, "-c", KERNEL_CALL], env=env, capture_output=True, text=True)
        return done.stdout.strip()

    assert call() == "ran"  # compiled and cached
    indexes = list((tmp_path / "numba").rglob("*.nbi"))
    assert indexes
    for index in indexes:
        index.write_bytes(b"garbage")  # as a job killed while numba wrote its cache leaves it
    assert call().startswith("cache UnpicklingError: ")


@pytest.mark.parametrize(
    "exc, category",
    [
        (pickle.UnpicklingError("could not find MARK"), "cache"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk"),
        (OSError(errno.EIO, "Input/output error"), "disk"),
        (ModuleNotFoundError("No module named 'numba'"), "software"),
        (RuntimeError("CUDA error: uncorrectable ECC error encountered"), "node"),
        (TrainingDiverged("training loss is nan at step 3 (epoch 1)"), "run"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "run"),
        (ValueError("a bug"), "run"),
    ],
)
def test_what_failed(exc, category):
    assert attempt.failure_category(exc) == category


def record(tmp_path: Path, exc: BaseException, seed: int, monkeypatch) -> Path:
    """A run whose last attempt raised exc, as the training job records it."""

    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr(train, "run_training", failing)
    out = tmp_path / run_dir(Path("results"), POINT, seed)
    attempt.train_or_record_failure({"seed": seed}, out, tmp_path / f"state{seed}", attempt=2, attempts=2)
    return out


def test_a_failure_not_of_the_run_is_recorded_and_shown_as_such(tmp_path, monkeypatch):
    cache = record(tmp_path, pickle.UnpicklingError("could not find MARK"), 1, monkeypatch)
    diverged = record(tmp_path, TrainingDiverged("training loss is nan at step 3 (epoch 1)"), 2, monkeypatch)
    failure = json.loads((cache / "run.json").read_text())["failure"]
    assert failure == {"reason": "UnpicklingError: could not find MARK", "attempts": 2, "category": "cache"}

    runs = [dict(POINT, seed=1), dict(POINT, seed=2)]
    table = runs_table(runs, [cache, diverged], list(POINT))
    assert table["failure_category"].tolist() == ["cache", "run"]  # a column of runs.csv

    cache_line, diverged_line = failed_run_lines(table)
    assert cache_line.startswith(
        f"{cache}: not the run's own (cache: a damaged cache or saved state); retry it"
    )
    assert cache_line.endswith("UnpicklingError: could not find MARK (2 attempts)")
    assert (
        diverged_line
        == f"{diverged}: TrainingDiverged: training loss is nan at step 3 (epoch 1) (2 attempts)"
    )
    assert "--forcerun" in retry_command("results/summary/failed_runs.txt")

    seen = run_status(tmp_path / "results", POINT, 1, "val_auc", False, {})
    assert seen.state == "failed" and seen.detail.startswith("not the run's own (cache")


def test_a_damaged_store_is_never_recorded_as_the_runs_failure(tmp_path, monkeypatch):
    damaged = errors.DataChanged(
        "results/prepared/train_x.npy: sha256 differs from manifest.json", "train_x.npy"
    )
    with pytest.raises(errors.DataChanged):
        record(tmp_path, damaged, 1, monkeypatch)
    assert not (tmp_path / run_dir(Path("results"), POINT, 1) / "run.json").exists()
