"""No write lands on what is not a regular file of ours, and a full disk is one line naming the file
(issue 21 items 2 and 4)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from bundle_fixtures import make_bundle
from conftest import pcamflow
from pcam_fixtures import write_raw_dir, write_split
from train_fixtures import write_store

from pcamflow import errors
from pcamflow.cli import main
from pcamflow.deployment.export import BUNDLE_FILES, META_FILE
from pcamflow.logged import run_logged
from pcamflow.training import attempt
from pcamflow.training.checkpoint import save_checkpoint

PCAM_X = "camelyonpatch_level_2_split_test_x.h5"


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work ran although its output must not be written")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    """A PCAM test split (x and y files) in a folder of its own."""
    folder = tmp_path_factory.mktemp("tiles")
    write_raw_dir(folder, {"test": 8})
    return folder


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def link_to_device(path: Path) -> Path:
    path.symlink_to("/dev/null")
    return path


NOT_A_FILE = {
    "a device": (lambda tmp: Path("/dev/full"), "is a character device"),
    "a FIFO": (lambda tmp: fifo(tmp / "pipe.csv"), "is a FIFO (named pipe)"),
    "a socket": (lambda tmp: unix_socket(tmp / "socket.csv"), "is a socket"),
    "a link to a device": (lambda tmp: link_to_device(tmp / "null.csv"), "is a character device (through a"),
}


def refused(argv: list[str], capsys, out, phrase: str) -> None:
    """The command exits 2 with one line naming --out and saying why, having done no work."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pcamflow: error: --out {out}: ") and phrase in err and "\n" not in err, err


@pytest.mark.parametrize("kind", NOT_A_FILE)
def test_predict_refuses_an_out_that_is_no_regular_file(
    kind, bundle_dir, tiles, tmp_path, capsys, monkeypatch
):
    from pcamflow.deployment import predict

    make, phrase = NOT_A_FILE[kind]
    out = make(tmp_path)
    before = os.stat(out).st_mode
    monkeypatch.setattr(predict, "load_bundle", _must_not_run)
    refused(
        ["predict", "--model", str(bundle_dir), "--out", str(out), "--input", str(tiles)], capsys, out, phrase
    )
    assert os.stat(out).st_mode == before and not stat.S_ISREG(before)  # still what it was


@pytest.mark.parametrize("command", ["audit", "throughput"])
def test_audit_and_throughput_refuse_a_fifo_as_out(command, tiles, tmp_path, capsys, monkeypatch):
    from pcamflow.data import audit
    from pcamflow.throughput import measure

    out = fifo(tmp_path / "out")
    if command == "audit":
        monkeypatch.setattr(audit, "audit_split", _must_not_run)
        x, y = tiles / PCAM_X, tiles / PCAM_X.replace("_x", "_y")
        argv = ["audit", "--x", str(x), "--y", str(y), "--out", str(out)]
    else:
        monkeypatch.setattr(measure, "bench_row", _must_not_run)
        store = write_store(tmp_path / "store", {"train": 8, "valid": 4, "test": 4})
        argv = ["throughput", "--mode", "data", "--data", str(store), "--out", str(out)]
    refused(argv, capsys, out, "is a FIFO (named pipe), not a regular file")
    assert stat.S_ISFIFO(os.stat(out).st_mode)


def test_predict_refuses_an_out_inside_the_bundle_or_an_input_folder(bundle_dir, tiles, capsys, monkeypatch):
    from pcamflow.deployment import predict

    monkeypatch.setattr(predict, "load_bundle", _must_not_run)
    meta = bundle_dir / META_FILE
    before = {name: (bundle_dir / name).read_bytes() for name in BUNDLE_FILES}
    refused(
        ["predict", "--model", str(bundle_dir), "--out", str(meta), "--input", str(tiles)],
        capsys,
        meta,
        f"lies inside the input {bundle_dir}",
    )
    inside = tiles / "predictions.csv"
    refused(
        ["predict", "--model", str(bundle_dir), "--out", str(inside), "--input", str(tiles)],
        capsys,
        inside,
        f"lies inside the input {tiles}",
    )
    assert {name: (bundle_dir / name).read_bytes() for name in BUNDLE_FILES} == before
    assert not inside.exists()


def test_prepare_train_and_throughput_refuse_an_out_inside_the_data_they_read(
    tiles, tmp_path, capsys, monkeypatch
):
    from pcamflow.data import prepare
    from pcamflow.throughput import measure
    from pcamflow.training import train

    raw = tmp_path / "raw"
    write_raw_dir(raw, {"train": 8, "valid": 4, "test": 4})
    monkeypatch.setattr(prepare, "prepare_store", _must_not_run)
    refused(
        ["prepare", "--raw-dir", str(raw), "--out", str(raw / "store")],
        capsys,
        raw / "store",
        "lies inside the input",
    )

    store = write_store(tmp_path / "store", {"train": 8, "valid": 4, "test": 4})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": str(store), "model": "cnn", "lr": 0.1, "batch_size": 4}))
    monkeypatch.setattr(train, "run_training", _must_not_run)
    refused(
        ["train", "--config", str(config), "--out", str(store / "run")],
        capsys,
        store / "run",
        f"the input {store}",
    )

    monkeypatch.setattr(measure, "bench_row", _must_not_run)
    out = store / "rows.csv"
    refused(
        ["throughput", "--mode", "data", "--data", str(store), "--out", str(out)], capsys, out, "lies inside"
    )
    assert not (store / "run").exists() and not out.exists()


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 200 KB tmpfs (root on Linux); elsewhere the test is skipped (tests below fake the error)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_pcamflow_train_on_a_full_disk_ends_with_one_line_naming_the_checkpoint(full_disk, tmp_path):
    store = write_store(tmp_path / "store", {"train": 64, "valid": 16, "test": 16})
    config = tmp_path / "run.yaml"
    run = {"data": str(store), "model": "cnn", "lr": 0.01, "batch_size": 16, "optimizer": "adam", "seed": 0}
    config.write_text(yaml.safe_dump({**run, "training": {"epochs": 2, "cnn_width": 16, "threads": 1}}))
    out = full_disk / "run"
    proc = pcamflow("train", "--config", str(config), "--out", str(out), check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith(f"pcamflow: error: no space left on device writing {full_disk}/"), last
    assert not (out / "run.json").exists()  # nothing marked complete


def test_predict_on_a_full_disk_ends_with_one_line_naming_the_csv(full_disk, bundle_dir, tmp_path, capsys):
    x_path = write_split(tmp_path, "test", *_tiles(256))[0]
    (full_disk / "filler").write_bytes(bytes(196_000))  # a few KB left: less than the CSV needs
    out = full_disk / "predictions.csv"
    assert main(["predict", "--model", str(bundle_dir), "--out", str(out), "--input", str(x_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"pcamflow: error: no space left on device writing {out}", err
    assert not out.exists()


def _tiles(n):
    from bundle_fixtures import synthetic_tiles

    return synthetic_tiles("test", n)


def test_a_full_disk_in_a_workflow_job_is_one_line_and_a_failure_not_of_the_run(
    tmp_path, monkeypatch, capsys
):
    """What torch raises when it writes through a file object on a full disk (given a path it raises
    RuntimeError 'unexpected pos'; save_checkpoint gives it a file object)."""
    import torch

    def no_space(obj, f):
        f.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    target = tmp_path / "run" / "checkpoint_last.pt"
    with pytest.raises(OSError) as caught:
        save_checkpoint(target, {"step": 1})
    assert attempt.failure_reason(caught.value) == f"no space left on device writing {target}"
    assert attempt.failure_category(caught.value) == "disk"
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file left

    with pytest.raises(SystemExit) as stop:
        run_logged(str(tmp_path / "job.log"), lambda: save_checkpoint(target, {"step": 1}))
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"pcamflow: error: no space left on device writing {target} (traceback in {tmp_path / 'job.log'})"
    )
    assert (
        errors.disk_full_line(OSError(errno.EDQUOT, "Disk quota exceeded", "x.csv"))
        == "disk quota exceeded writing x.csv"
    )


def test_prepare_on_a_full_disk_ends_with_one_line_naming_the_file_and_leaves_nothing(full_disk, tmp_path):
    write_raw_dir(tmp_path / "raw", {"train": 64, "valid": 16, "test": 16})  # 2.6 MB of tiles, 200 KB of disk
    out = full_disk / "prepared"
    proc = pcamflow("prepare", "--raw-dir", str(tmp_path / "raw"), "--out", str(out), check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith(f"pcamflow: error: no space left on device writing {full_disk}/"), last
    assert last.endswith("train_x.npy"), last
    assert list(full_disk.iterdir()) == []  # no store, no temporary folder
