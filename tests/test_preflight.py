"""The preflight (pcamflow.training.preflight, rule preflight): checks of a training job's node before a sweep."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import snakemake
from test_staging import fake_scontrol
from train_fixtures import write_store

from pcamflow.config import validate_training
from pcamflow.errors import PcamflowError
from pcamflow.io import read_json
from pcamflow.training import preflight

POINTS = [
    {"model": model, "lr": 0.001, "batch_size": batch, "optimizer": optimizer}
    for model in ("mlp", "cnn")
    for batch in (16, 32)
    for optimizer in ("sgd", "adam")
]


@pytest.fixture
def training():
    return validate_training({"epochs": 1, "cnn_width": 8, "mlp_hidden": [32]})


@pytest.fixture
def outside_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU"):
        monkeypatch.delenv(name, raising=False)


def test_costliest_point_is_the_largest_model_at_its_largest_batch(training):
    assert preflight.costliest_point(POINTS, training) == {
        "model": "cnn",
        "lr": 0.001,
        "batch_size": 32,
        "optimizer": "adam",
    }


def test_passing_preflight_records_device_store_and_peak_memory(tmp_path, training, outside_slurm):
    store = write_store(tmp_path / "prepared")
    out = tmp_path / "preflight.json"
    record = preflight.run_preflight(POINTS, 1, training, store, out)
    assert read_json(out) == record
    assert record["partition"] == "local"
    assert record["device"]["device"] == "cpu" and record["device"]["torch"] == torch.__version__
    assert record["store"] == {
        "path": str(store),
        "checksum": record["store"]["checksum"],
        "tiles": {"train": 200, "valid": 64},
    }
    assert record["trial"]["point"]["batch_size"] == 32 and record["trial"]["steps"] == preflight.TRIAL_STEPS
    assert record["trial"]["peak_host_memory_mb"] > 0


def test_preflight_that_needs_more_memory_than_the_job_has_fails_in_one_line(
    tmp_path, training, outside_slurm, monkeypatch
):
    store = write_store(tmp_path / "prepared")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu_course")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "64")  # MB: less than Python and torch alone
    out = tmp_path / "preflight.json"
    with pytest.raises(PcamflowError) as failure:
        preflight.run_preflight(POINTS, 1, training, store, out)
    message = str(failure.value)
    assert "\n" not in message
    assert re.fullmatch(r"preflight on gpu_course: cnn at batch 32 .* more than the job's 64 MB: .*", message)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_preflight_asking_for_cuda_where_there_is_none_fails_before_training(
    tmp_path, training, outside_slurm
):
    store = write_store(tmp_path / "prepared")
    with pytest.raises(PcamflowError, match=r"^preflight on local: training.device: cuda requested"):
        preflight.run_preflight(POINTS, 1, dict(training, device="cuda"), store, tmp_path / "p.json")


def test_preflight_of_an_unreadable_store_names_it(tmp_path, training, outside_slurm):
    store = write_store(tmp_path / "prepared")
    (store / "valid_x.npy").write_bytes(b"not an array")
    with pytest.raises(PcamflowError, match=r"^preflight on local: prepared store .* not readable"):
        preflight.run_preflight(POINTS, 1, training, store, tmp_path / "p.json")


def planned_inputs(dry_run: str, rule: str) -> list[str]:
    """The input line of every job of `rule` in a dry run's (-n) listing."""
    blocks = re.split(r"^\s*(?=(?:local)?(?:rule|checkpoint) \w+:$)", dry_run, flags=re.M)
    return [
        (re.search(r"^\s+input: (.*)$", block, re.M) or [None, ""])[1]
        for block in blocks
        if re.match(rf"\s*(?:local)?(?:rule|checkpoint) {rule}:", block)
    ]


def test_training_jobs_wait_for_the_preflight_but_a_finished_run_does_not(workflow_dir):
    finished = workflow_dir / "results/runs/model~cnn/lr~0.001/batch_size~32/optimizer~adam/seed~1"
    finished.mkdir(parents=True)
    (finished / "history.json").write_text("{}")
    out = snakemake(workflow_dir, "-n", "--configfile", "config/test.yaml", "--cores", "1").stdout
    inputs = planned_inputs(out, "train")
    assert len(inputs) == 4
    # a run still to do waits for the preflight (a dry run shows the checkpoint's file as its input);
    # the finished run (its history exists) does not
    waiting = [line for line in inputs if "results/preflight/train.json" in line]
    assert len(waiting) == 3
    assert len(planned_inputs(out, "preflight")) == 1


def test_job_that_asked_for_scratch_but_got_none_fails_and_one_that_got_it_passes(
    tmp_path, training, outside_slurm, monkeypatch
):
    store = write_store(tmp_path / "prepared")
    fake_scontrol(tmp_path / "bin", monkeypatch, "scratch-node")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu_a100")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what Snakemake gives a job whose $TMPDIR is missing
    with pytest.raises(PcamflowError, match=r"^preflight on gpu_a100: the job asked for node-local scratch"):
        preflight.run_preflight(POINTS, 1, training, store, tmp_path / "p.json")
    scratch = tmp_path / "scratch" / "77"
    scratch.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(scratch))
    record = preflight.run_preflight(POINTS, 1, training, store, tmp_path / "p.json")
    assert record["scratch"]["path"] == str(scratch) and record["scratch"]["asked"] is True


def test_job_memory_comes_from_slurms_record_of_the_job_when_its_step_has_no_variable(
    tmp_path, training, outside_slurm, monkeypatch
):
    """Snakemake runs a job's rule as a job step, where SLURM_MEM_PER_NODE may be missing."""
    store = write_store(tmp_path / "prepared")
    fake_scontrol(tmp_path / "bin", monkeypatch, "(null)", tres="cpu=2,mem=64M,node=1,gres/gpu=1")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_JOB_PARTITION", "gpu_course")
    assert preflight.job_memory_mb() == 64
    with pytest.raises(
        PcamflowError, match=r"^preflight on gpu_course: cnn at batch 32 .* more than the job's 64 MB"
    ):
        preflight.run_preflight(POINTS, 1, training, store, tmp_path / "p.json")
