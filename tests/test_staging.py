"""Node-local staging of the prepared store (pcamflow.data.staging)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pcamflow.data import staging
from pcamflow.data.store import MANIFEST_FILE, STATS_FILE, load_split
from pcamflow.io import write_json


def write_store(store, checksum: str, n: int = 4):
    """A minimal prepared store: one split's arrays and a manifest carrying the checksum."""
    store.mkdir(parents=True, exist_ok=True)
    np.save(store / "train_x.npy", np.full((n, 96, 96, 3), 7, dtype=np.uint8))
    np.save(store / "train_y.npy", np.arange(n, dtype=np.uint8) % 2)
    np.save(store / "train_index.npy", np.arange(n, dtype=np.int64))
    write_json(store / MANIFEST_FILE, {"checksum": checksum})
    return store


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "shared" / "prepared", "a" * 64)


@pytest.fixture
def in_slurm_job(tmp_path, monkeypatch):
    """The environment of a Slurm job with node-local scratch; returns the scratch directory."""
    scratch = tmp_path / "scratch-node"
    scratch.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("TMPDIR", str(scratch))
    return scratch


def test_outside_slurm_reads_the_store_in_place(store, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert staging.stage_prepared(store) == store
    assert not (tmp_path / staging.STAGE_ROOT).exists()


def test_slurm_job_without_scratch_reads_the_store_in_place(store, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert staging.stage_prepared(store) == store


def test_slurm_job_copies_the_store_to_scratch(store, in_slurm_job):
    staged = staging.stage_prepared(store)
    assert staged.is_relative_to(in_slurm_job)
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in store.iterdir())
    original, copy = load_split(store, "train"), load_split(staged, "train")
    np.testing.assert_array_equal(copy.x, original.x)
    np.testing.assert_array_equal(copy.y, original.y)
    assert not [p for p in staged.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_only_what_training_reads_is_staged_not_the_test_split(store, in_slurm_job):
    np.save(store / "test_x.npy", np.zeros((4, 96, 96, 3), dtype=np.uint8))
    write_json(store / STATS_FILE, {"mean": [0.5] * 3, "std": [0.2] * 3})
    staged = staging.stage_prepared(store)
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        ["train_x.npy", "train_y.npy", "train_index.npy", STATS_FILE, MANIFEST_FILE]
    )


def test_second_call_in_the_same_job_reuses_the_copy(store, in_slurm_job, monkeypatch):
    first = staging.stage_prepared(store)

    def no_copy(*args, **kwargs):
        raise AssertionError("copied twice")

    monkeypatch.setattr(shutil, "copy2", no_copy)
    assert staging.stage_prepared(store) == first


def test_a_changed_store_is_staged_again(store, in_slurm_job):
    first = staging.stage_prepared(store)
    write_store(store, "b" * 64, n=6)
    second = staging.stage_prepared(store)
    assert second != first
    assert len(load_split(second, "train")) == 6


def test_a_stale_copy_under_the_same_name_is_replaced(store, in_slurm_job):
    staged = staging.stage_prepared(store)
    write_json(staged / MANIFEST_FILE, {"checksum": "a" * 63 + "0"})  # same prefix, other store
    np.save(staged / "train_y.npy", np.zeros(1, dtype=np.uint8))
    assert staging.stage_prepared(store) == staged
    np.testing.assert_array_equal(load_split(staged, "train").y, load_split(store, "train").y)


def test_too_little_scratch_space_reads_the_store_in_place(store, in_slurm_job, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    assert staging.stage_prepared(store) == store


def test_atomic_dir_replaces_on_success_and_leaves_the_old_directory_on_failure(tmp_path):
    from pcamflow.io import atomic_dir

    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("2")
    assert [p.name for p in target.iterdir()] == ["c"]
    with atomic_dir(target, replace=False) as tmp:
        (tmp / "d").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]  # the directory already there is kept
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left


def fake_scontrol(
    directory, monkeypatch, features: str, tres: str = "cpu=2,mem=16G,node=1,gres/gpu=1"
) -> None:
    """An `scontrol` on PATH that shows job 1234 as Slurm 22.05 does, with these features and TRES."""
    directory.mkdir()
    script = directory / "scontrol"
    line = f"JobId=1234 JobName=x Partition=gpu_course TRES={tres} Features={features} DelayBoot=00:00:00"
    script.write_text(f"#!/bin/sh\necho '{line}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")


def test_job_that_did_not_ask_for_scratch_reads_the_shared_copy_and_says_so(
    store, in_slurm_job, tmp_path, monkeypatch, caplog
):
    fake_scontrol(tmp_path / "bin", monkeypatch, "(null)")
    caplog.set_level("INFO", logger="pcamflow.data.staging")
    assert staging.job_asks_for_scratch() is False
    assert staging.stage_prepared(store) == store
    assert not list(in_slurm_job.iterdir())
    assert "reading the shared copy" in caplog.text and "node_local_staging is off" in caplog.text


def test_job_that_asked_for_scratch_among_other_features_stages(store, in_slurm_job, tmp_path, monkeypatch):
    fake_scontrol(tmp_path / "bin", monkeypatch, "rome&scratch-node")
    assert staging.job_asks_for_scratch() is True
    assert staging.stage_prepared(store).is_relative_to(in_slurm_job)
