"""A run that fails on its last attempt is recorded as failed in its outputs; earlier attempts raise."""

import json

import pytest
from train_fixtures import write_store

from pcamflow.errors import Preempted
from pcamflow.rundir import LAST_CHECKPOINT
from pcamflow.training import attempt, runstatus, train
from pcamflow.training.loop import TrainingDiverged

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 60, "valid": 20})


def diverging_config(store, epochs=1):
    training = {"epochs": epochs, "mlp_hidden": [8], "threads": 1, "log_every": 1, "warmup_epochs": 0}
    return {
        "data": str(store),
        "model": "mlp",
        "lr": 1e30,
        "batch_size": 20,
        "optimizer": "sgd",
        "seed": 1,
        "training": {**training, "device": "cpu"},
    }


def test_an_attempt_before_the_last_fails_so_snakemake_retries_it(store, tmp_path):
    with pytest.raises(TrainingDiverged):
        attempt.train_or_record_failure(
            diverging_config(store), tmp_path / "out", tmp_path / "state", attempt=2, attempts=3
        )
    assert not (tmp_path / "out" / "run.json").exists()


def test_the_last_attempt_records_the_failure_in_every_declared_output(store, tmp_path):
    out = tmp_path / "out"
    result = attempt.train_or_record_failure(
        diverging_config(store), out, tmp_path / "state", attempt=3, attempts=3, live_dir=tmp_path / "live"
    )
    assert result is None
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["failure"]["attempts"] == 3
    assert info["failure"]["reason"].startswith("TrainingDiverged: training loss is nan at step 2 (epoch 1)")
    assert runstatus.run_status(out) == {"status": "failed", "failure": info["failure"]}
    for name in ("history.json", "metrics.csv", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (out / name).is_file(), name
    assert (out / "tensorboard").is_dir()
    assert json.loads((out / "history.json").read_text())["status"] == "failed"


def test_a_run_preempted_on_its_last_attempt_is_recorded_and_keeps_its_resume_state(
    store, tmp_path, monkeypatch
):
    def preempted(*args, **kwargs):
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / LAST_CHECKPOINT).write_bytes(b"resume me")
        raise Preempted("SIGTERM: checkpointed at step 40; run again to resume")

    monkeypatch.setattr(train, "run_training", preempted)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the time limit's SIGTERM, on the job's last attempt
    attempt.train_or_record_failure({"seed": 1}, tmp_path / "out", tmp_path / "state", attempt=1, attempts=1)
    failure = runstatus.run_status(tmp_path / "out")["failure"]
    assert failure == {
        "reason": "Preempted: SIGTERM: checkpointed at step 40; run again to resume",
        "attempts": 1,
        "category": "run",  # the time limit of the run's own job
    }
    assert (tmp_path / "state" / LAST_CHECKPOINT).read_bytes() == b"resume me"  # a retry resumes from it


def test_a_successful_run_says_done_and_an_old_run_json_counts_as_done(store, tmp_path):
    config = {**diverging_config(store), "lr": 0.01}
    attempt.train_or_record_failure(config, tmp_path / "out", tmp_path / "state", attempt=1, attempts=1)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "done"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps({"seed": 1}))
    assert runstatus.run_status(tmp_path / "old") == {"status": "done", "failure": None}


def test_an_injected_failure_hits_only_the_runs_it_names(store, tmp_path, monkeypatch):
    monkeypatch.setenv(attempt.INJECT_ENV, "*/lr~0.5/*")
    with pytest.raises(attempt.InjectedFailure, match="injected by PCAMFLOW_INJECT_FAILURE"):
        attempt.check_injected_failure(tmp_path / "model~mlp" / "lr~0.5" / "seed~1")
    attempt.check_injected_failure(tmp_path / "model~mlp" / "lr~0.05" / "seed~1")


@pytest.mark.parametrize(
    ("message", "slurm_job"),
    [("SIGINT: checkpointed at step 3; run again to resume", "4242"), ("SIGTERM: checkpointed", None)],
    ids=["ctrl-c", "sigterm-outside-slurm"],
)
def test_a_stop_the_user_asked_for_stays_resumable_on_the_last_attempt(
    tmp_path, monkeypatch, message, slurm_job
):
    def stopped(*args, **kwargs):
        raise Preempted(message)

    monkeypatch.setattr(train, "run_training", stopped)
    if slurm_job:
        monkeypatch.setenv("SLURM_JOB_ID", slurm_job)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(Preempted):
        attempt.train_or_record_failure(
            {"seed": 1}, tmp_path / "out", tmp_path / "state", attempt=1, attempts=1
        )
    assert not (tmp_path / "out" / "run.json").exists()  # a rerun resumes it; nothing is marked failed
