"""`pcamflow status` tells a live Snakemake controller from the stale locks of a dead one, and says
nothing of Slurm where there is none (issue 21 item 3)."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_workflow, pcamflow, snakemake
from test_train_workflow import training_script_pid

from pcamflow.evaluation.status import slurm_jobs

LOCKS = Path(".snakemake/locks")  # Snakemake's


def controller_module():
    """pcamflow.controller (imported here: the tests also run, and fail, on the code before it)."""
    return importlib.import_module("pcamflow.controller")


RECORD_IN_A_CHILD = (
    "import sys; from pathlib import Path; from pcamflow.controller import record_controller; "
)
RECORD_IN_A_CHILD += "record_controller(Path(sys.argv[1]))"


def snakemake_locks(workdir: Path) -> None:
    """What Snakemake leaves in .snakemake/locks while it runs (or after it was killed)."""
    (workdir / LOCKS).mkdir(parents=True, exist_ok=True)
    (workdir / LOCKS / "0.input.lock").write_text("results/prepared/train_x.npy\n")
    (workdir / LOCKS / "0.output.lock").write_text("results/runs/model~mlp/seed~3/history.json\n")


def test_a_controller_is_live_dead_or_not_there(tmp_path):
    controller_state, record_controller = (
        controller_module().controller_state,
        controller_module().record_controller,
    )
    assert controller_state(tmp_path).state == "none"
    snakemake_locks(tmp_path)
    assert controller_state(tmp_path).state == "unknown"  # locks of a controller that left no record

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    subprocess.run([sys.executable, "-c", RECORD_IN_A_CHILD, str(tmp_path)], env=env, check=True)
    dead = controller_state(tmp_path)  # that process has exited: its locks are stale
    assert dead.state == "dead" and f"is gone; its locks in {tmp_path / LOCKS} are stale" in dead.detail

    mine = record_controller(tmp_path)
    assert controller_state(tmp_path).state == "live"
    mine.unlink()
    elsewhere = tmp_path / LOCKS / f"{controller_module().RECORD_PREFIX}.login2.4242.json"
    elsewhere.write_text(json.dumps({"host": "login2", "pid": 4242, "start": "1"}))
    assert controller_state(tmp_path).state == "live"  # another host's process cannot be looked up


def fake_squeue(tmp_path: Path, stderr: str, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit 1\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)


def test_no_slurm_note_where_slurm_is_not_set_up(tmp_path, monkeypatch):
    fake_squeue(tmp_path, "squeue: error: _establish_config_source: failed to fetch config", monkeypatch)
    assert slurm_jobs(tmp_path) == ({}, None)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    assert slurm_jobs(tmp_path) == ({}, None)  # without asking squeue, which would retry for a minute
    fake_squeue(tmp_path, "slurm_load_jobs error: Socket timed out on send/recv operation", monkeypatch)
    assert slurm_jobs(tmp_path) == (
        {},
        "squeue failed: slurm_load_jobs error: Socket timed out on send/recv operation",
    )


@pytest.mark.slow
def test_status_after_a_dead_controller_says_interrupted_and_how_to_resume(finished_test_sweep, tmp_path):
    workdir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    config = ("--configfile", "config/test.yaml", "--config", "seeds=[1,2,3]")
    run = "results/runs/model~mlp/lr~0.001/batch_size~32/optimizer~adam/seed~3"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    controller = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *config, "--", f"{run}/history.json"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while training_script_pid(controller.pid) is None and controller.poll() is None:
        assert time.monotonic() < deadline, "the training job did not start"
        time.sleep(0.2)
    assert controller.poll() is None, controller.communicate()[0]
    os.killpg(controller.pid, signal.SIGKILL)  # the controller and its job, as a dying login node would
    controller.wait()
    assert any((workdir / LOCKS).glob("*.lock"))  # Snakemake could not remove its locks

    status = pcamflow("status", "--config", "config/test.yaml", "--set", "seeds=[1,2,3]", cwd=workdir)
    out = status.stdout
    assert re.search(r"^  seed 3 +interrupted", out, re.M), out
    resume = "snakemake --unlock --configfile config/test.yaml --config seeds=[1,2,3] && snakemake "
    resume += "--configfile config/test.yaml --config seeds=[1,2,3]"
    assert (
        f"is gone; its locks in .snakemake/locks are stale; resume the interrupted runs with: {resume}" in out
    )
    assert "squeue" not in out  # no Slurm here: nothing to say about it

    # the command status gives resumes it (here for that run alone)
    snakemake(workdir, "--unlock", *config)
    snakemake(workdir, "--cores", "2", *config, "--", f"{run}/history.json")
    out = pcamflow("status", "--config", "config/test.yaml", "--set", "seeds=[1,2,3]", cwd=workdir).stdout
    assert re.search(r"^  seed 3 +done", out, re.M), out
