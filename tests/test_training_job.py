"""The workflow's training job trains in a child process: a child killed by a signal (the OOM
killer's SIGKILL) is retried before the last attempt and recorded as failed on it; a SIGTERM to the
job still checkpoints the training and exits 75, so a retry resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from train_fixtures import write_store

from pcamflow.errors import EXIT_PREEMPTED, PcamflowError
from pcamflow.rundir import LAST_CHECKPOINT, RUN_FILES, TENSORBOARD
from pcamflow.training import job, runstatus

# every test starts real training processes and waits for them to train, checkpoint or die (seconds each)
pytestmark = pytest.mark.slow

OOM_REASON = "killed by signal SIGKILL (out of memory? check the job's memory request, resources.mem_mb / sacct MaxRSS)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 60, "valid": 20})


def run_config(store, **training) -> dict:
    """Long enough to be caught training (3 steps an epoch), with a resume checkpoint every step."""
    settings = {"epochs": 500, "mlp_hidden": [8], "threads": 1, "log_every": 1, "checkpoint_every_steps": 1}
    return {
        "data": str(store),
        "model": "mlp",
        "lr": 0.01,
        "batch_size": 20,
        "optimizer": "sgd",
        "seed": 1,
        "training": {**settings, "device": "cpu", **training},
    }


def training_child() -> int | None:
    """The pid of the training child this process started (from /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"pcamflow.training.job" in cmdline:
            return int(entry.name)
    return None


def wait_for_new_checkpoint(state: Path, before: int, future) -> None:
    """Until the training writes a resume checkpoint after `before` (mtime in ns)."""
    deadline = time.monotonic() + 120
    while not (state.exists() and state.stat().st_mtime_ns > before):
        assert not future.done(), future.result()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)


def supervise_and_kill(config, tmp_path, *, attempt, attempts, sig=signal.SIGKILL):
    """Run the job with a supervisor in a thread; kill its child once it has checkpointed a step."""
    state = tmp_path / "state" / LAST_CHECKPOINT
    before = state.stat().st_mtime_ns if state.exists() else 0
    kwargs = dict(
        attempt=attempt, attempts=attempts, live_dir=tmp_path / "live", log_path=tmp_path / "train.log"
    )
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(job.supervise_training, config, tmp_path / "out", tmp_path / "state", **kwargs)
        wait_for_new_checkpoint(state, before, future)
        os.kill(training_child(), sig)
        return future.result(timeout=120)


def test_a_training_process_killed_by_sigkill_is_retried_then_recorded_as_failed(store, tmp_path):
    config, out = run_config(store), tmp_path / "out"
    # attempt 1 of 2: the job fails, nothing is recorded, and the resume state stays for the retry
    with pytest.raises(PcamflowError, match=r"^training killed by signal SIGKILL \(out of memory\?.*1 of 2"):
        supervise_and_kill(config, tmp_path, attempt=1, attempts=2)
    assert not (out / "run.json").exists()
    assert (tmp_path / "state" / LAST_CHECKPOINT).exists()

    # the last attempt resumes, is killed again (a node that keeps running out of memory): recorded
    assert supervise_and_kill(config, tmp_path, attempt=2, attempts=2) is None
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["failure"] == {
        "reason": OOM_REASON,
        "attempts": 2,
        "category": "run",
    }
    assert info["steps_done"] > 0 and info["run_config"] == config  # from the resume checkpoint
    assert runstatus.run_status(out)["status"] == "failed"
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert (out / TENSORBOARD).is_dir()
    assert json.loads((out / "history.json").read_text())["status"] == "failed"
    log = (tmp_path / "train.log").read_text()
    assert "resuming from" in log  # the second attempt's child continued the first one's training


def test_a_crash_in_native_code_is_recorded_with_the_python_stack_in_the_log(store, tmp_path):
    supervise_and_kill(run_config(store), tmp_path, attempt=1, attempts=1, sig=signal.SIGSEGV)
    failure = runstatus.run_status(tmp_path / "out")["failure"]
    assert (
        failure["reason"]
        == "killed by signal SIGSEGV (a crash in native code; the log holds the Python stack)"
    )
    log = (tmp_path / "train.log").read_text()
    assert "Fatal Python error: Segmentation fault" in log and "pcamflow/training/loop.py" in log


def test_the_childs_exit_code_and_its_one_line_reach_the_job(store, tmp_path, capfd):
    diverging = run_config(store, epochs=1, checkpoint_every_steps=0) | {"lr": 1e30}
    with pytest.raises(SystemExit) as stop:
        job.supervise_training(
            diverging, tmp_path / "out", tmp_path / "state", attempt=1, attempts=2, log_path=tmp_path / "log"
        )
    assert stop.value.code == 1
    terminal = capfd.readouterr().err.splitlines()
    # divergence is an outcome of the run's settings, said plainly: no "unexpected TrainingDiverged"
    assert len(terminal) == 1 and terminal[0].startswith("pcamflow: error: training loss is ")
    assert "the run diverged" in terminal[0] and "unexpected" not in terminal[0]
    assert terminal[0] in (tmp_path / "log").read_text()  # and in the log
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_sigterm_to_the_job_reaches_the_training_which_checkpoints_and_exits_75(
    store, tmp_path, monkeypatch
):
    """What a Snakemake stop (or, on an earlier attempt, Slurm's time-limit warning) sends the job."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    state = tmp_path / "state" / LAST_CHECKPOINT

    def sigterm_once_training():
        deadline = time.monotonic() + 120
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process, the supervisor: the child gets it forwarded

    handler = signal.getsignal(signal.SIGTERM)
    sender = threading.Thread(target=sigterm_once_training)
    sender.start()
    with pytest.raises(SystemExit) as stop:  # the supervisor runs in the main thread, as in a rule's script
        job.supervise_training(
            run_config(store),
            tmp_path / "out",
            state.parent,
            attempt=1,
            attempts=1,
            log_path=tmp_path / "log",
        )
    sender.join()
    assert stop.value.code == EXIT_PREEMPTED
    log = (tmp_path / "log").read_text()
    assert "SIGTERM received: checkpointed" in log and "pcamflow: SIGTERM: checkpointed" in log
    assert not (tmp_path / "out" / "run.json").exists()  # stopped, not failed: a rerun resumes it
    assert state.exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the supervisor put the job's handler back
