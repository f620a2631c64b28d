"""Finished runs outlive their inputs (issue 21 item 1, issue 23 item 4): a damaged store stops the
workflow once, before any job, and touches no finished run; a store written again with the same
content retrains nothing; a store whose content changed is another experiment; jobs hash the store
once per content, not once per job."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import copy_workflow, snakemake
from test_experiments import snapshot
from train_fixtures import write_manifest, write_store

from pcamflow import errors, experiment
from pcamflow.data import store as store_module
from pcamflow.data.store import array_path, verify_store
from pcamflow.errors import PcamflowError
from pcamflow.io import file_digest, new_digest, write_json
from pcamflow.layout import EXPERIMENT_FILE

# (names new in this change are used as module attributes, so the file also runs, and fails, on the
# code before it)

CONFIG = ("--configfile", "config/test.yaml")
SPLITS = ("train", "valid", "test")


def flip_byte(path, keep_mtime: bool = False) -> None:
    """One byte changed in place, as a failing disk or a stray write would (mtime put back if asked)."""
    stat = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def run_files(results) -> dict:
    """sha256 and mtime of every file of every run and of its resume state."""
    return {
        name: value for name, value in snapshot(results).items() if name.split("/")[0] in ("runs", "state")
    }


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "store", {"train": 16, "valid": 8, "test": 8})


@pytest.fixture
def hashes(monkeypatch):
    """The files verify_store hashes, in order."""
    hashed = []
    real = store_module.sha256sum

    def counting(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(store_module, "sha256sum", counting)
    return hashed


def test_the_store_is_hashed_once_per_content_not_once_per_job(store, hashes):
    checksum = verify_store(store, ("train", "valid"))
    read = [f"{split}_{array}.npy" for split in ("train", "valid") for array in ("x", "y", "index")]
    assert sorted(hashes) == sorted([*read, "stats.json"])
    hashes.clear()
    assert verify_store(store, ("train", "valid")) == checksum  # the next job: stat only
    assert hashes == []
    # a file replaced by an identical copy (new inode): hashed again, and remembered again
    copy = store / "copy.npy"
    shutil.copy2(array_path(store, "train", "y"), copy)
    os.replace(copy, array_path(store, "train", "y"))
    verify_store(store, ("train", "valid"))
    assert hashes == ["train_y.npy"]


def test_a_node_local_copy_is_hashed_by_the_job_that_makes_it(store, hashes, tmp_path, monkeypatch):
    from pcamflow.data import staging

    scratch = tmp_path / "scratch-node"
    scratch.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "1234")  # a Slurm job with node-local scratch (test_staging)
    monkeypatch.setenv("TMPDIR", str(scratch))
    verify_store(store, ("train", "valid"))  # the shared copy: verified and recorded
    hashes.clear()
    staged = staging.stage_prepared(store)
    assert staged.parent.parent == scratch and not (staged / store_module.VERIFIED_FILE).exists()
    verify_store(staged, ("train", "valid"))  # the copy has no record of its own: every file is hashed
    assert len(hashes) == 7
    hashes.clear()
    verify_store(staging.stage_prepared(store), ("train", "valid"))  # a later job on the node reuses it
    assert hashes == []


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["written", "written, mtime put back"])
def test_a_changed_byte_is_caught_even_after_a_verification_was_recorded(store, keep_mtime):
    verify_store(store, ("train", "valid"))
    assert (store / store_module.VERIFIED_FILE).exists()
    path = array_path(store, "train", "x")
    time.sleep(0.05)  # file times tick in steps of a few ms: damage comes later than that
    flip_byte(path, keep_mtime)  # putting the mtime back moves ctime: the stat still differs
    with pytest.raises(errors.DataChanged) as err:
        verify_store(store, ("train", "valid"))
    assert str(err.value).startswith(f"{path}: sha256 differs from manifest.json")


def test_before_any_job_a_damaged_store_is_one_line_naming_the_file(store, tmp_path):
    root = tmp_path / "results"
    path = array_path(store, "valid", "x")
    flip_byte(path)
    with pytest.raises(PcamflowError) as err:
        store_module.check_store_before_jobs(store, SPLITS, root, rebuilt=False, rebuild_only=False)
    message = str(err.value)
    assert message.startswith(f"{path}: sha256 differs from manifest.json") and "\n" not in message
    assert "adding --forcerun prepare to this command" in message
    # --forcerun prepare writes it anew: nothing to check before the jobs (the preflight checks it)
    store_module.check_store_before_jobs(store, SPLITS, root, rebuilt=True, rebuild_only=False)


def test_a_store_other_than_the_one_the_runs_were_trained_on_is_another_experiment(store, tmp_path):
    root = tmp_path / "results"
    trained_on = json.loads((store / "manifest.json").read_text())["checksum"]
    write_json(
        root / EXPERIMENT_FILE, {"experiment": "default", "settings": {}, experiment.STORE_KEY: trained_on}
    )
    store_module.check_store_before_jobs(
        store, SPLITS, root, rebuilt=False, rebuild_only=False
    )  # the same store
    flip_byte(array_path(store, "train", "x"))
    write_manifest(store)  # consistent with itself, but not what the runs saw
    with pytest.raises(
        PcamflowError, match=r"were trained on the prepared store with checksum .*experiment=NAME"
    ):
        store_module.check_store_before_jobs(store, SPLITS, root, rebuilt=False, rebuild_only=False)


def test_a_missing_store_that_runs_were_trained_on_is_rebuilt_alone_first(store, tmp_path):
    root = tmp_path / "results"
    checksum = json.loads((store / "manifest.json").read_text())["checksum"]
    array_path(store, "train", "x").unlink()
    store_module.check_store_before_jobs(
        store, SPLITS, root, rebuilt=False, rebuild_only=False
    )  # nothing trained yet
    write_json(
        root / EXPERIMENT_FILE, {"experiment": "default", "settings": {}, experiment.STORE_KEY: checksum}
    )
    with pytest.raises(PcamflowError, match=r"train_x.npy: missing, .*\(add --until prepare"):
        store_module.check_store_before_jobs(store, SPLITS, root, rebuilt=False, rebuild_only=False)
    store_module.check_store_before_jobs(store, SPLITS, root, rebuilt=False, rebuild_only=True)


@pytest.mark.slow
def test_a_damaged_store_stops_the_workflow_once_and_an_identical_rebuild_retrains_nothing(
    finished_test_sweep, tmp_path
):
    workdir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    results = workdir / "results"
    before = run_files(results)
    assert len(before) > 10
    damaged = results / "prepared" / "train_x.npy"
    flip_byte(damaged)

    for dry_run in (("-n",), ()):  # planning and running alike
        run = snakemake(workdir, "--cores", "2", *CONFIG, *dry_run, check=False)
        assert run.returncode != 0
        errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
        assert errors == [
            "pcamflow: error: results/prepared/train_x.npy: sha256 differs from manifest.json: changed "
            "or damaged since prepare wrote it; nothing was run: rebuild the store by adding --forcerun "
            "prepare to this command (the finished runs are kept when the rebuilt store is identical)"
        ], run.stderr
        assert run_files(results) == before  # byte-identical, same mtimes

    # written again with the same content: the store is repaired, nothing is trained
    plan = snakemake(workdir, "--cores", "2", *CONFIG, "--forcerun", "prepare", "-n").stdout
    assert "rule train:" not in plan and "rule reproducibility:" not in plan and "rule prepare:" in plan
    snakemake(workdir, "--cores", "2", *CONFIG, "--forcerun", "prepare")
    assert run_files(results) == before
    assert "Nothing to be done" in snakemake(workdir, "--cores", "2", *CONFIG, "-n").stdout


@pytest.mark.slow
def test_forceall_over_finished_runs_is_refused_in_one_line_and_deletes_nothing(
    finished_test_sweep, tmp_path
):
    workdir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    results = workdir / "results"
    before = run_files(results)
    for dry_run in (("-n",), ()):
        run = snakemake(workdir, "--cores", "2", *CONFIG, "-F", *dry_run, check=False)
        assert run.returncode != 0
        errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("pcamflow: error: -F/--forceall would delete"), (
            run.stderr
        )
        assert "--forcerun RULE" in errors[0] and "--config experiment=NAME" in errors[0]
        assert run_files(results) == before  # byte-identical, same mtimes


@pytest.mark.parametrize("algorithm", ["sha256", "xxh128"])
def test_a_file_hashed_in_chunks_while_the_disk_reads_ahead_has_its_whole_digest(tmp_path, algorithm):
    # several chunks, the last one partial, and a read-ahead hint past the end of the file
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    whole = new_digest(algorithm)
    whole.update(data)
    assert file_digest(tmp_path / "f", algorithm, chunk=4096) == whole.hexdigest()
