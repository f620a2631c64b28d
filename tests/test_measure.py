"""`pcamflow throughput`: one correct CSV row per call, OOM as a row, invalid combinations, partitions."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from pcam_fixtures import write_split
from torch.utils.data import DataLoader
from train_fixtures import write_store

from pcamflow.cli import main as cli
from pcamflow.constants import TILE_SHAPE
from pcamflow.errors import PcamflowError
from pcamflow.throughput import measure as bench
from pcamflow.throughput.baselines import CourseH5Dataset, ReopenH5Dataset, balanced_sampler

BATCH, WARMUP, STEPS = 8, 1, 2
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 40, "valid": 8, "test": 8})


@pytest.fixture(scope="module")
def raw_x(tmp_path_factory):
    """A course-style float32 train file with a NaN, an out-of-range value and 3:1 imbalance."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(24, *TILE_SHAPE)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = np.nan, 400.0
    y = (np.arange(24) % 4 == 0).astype(np.uint8)
    x_path, _ = write_split(tmp_path_factory.mktemp("raw"), "train", x, y)
    return x_path


def bench_args(mode, data, out, **options):
    args = {
        "mode": mode,
        "data": data,
        "batch-size": BATCH,
        "warmup": WARMUP,
        "steps": STEPS,
        "min-seconds": 0,  # exactly the steps asked for
        "threads": 1,
        "out": out,
        **options,
    }
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def read_rows(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


@pytest.mark.parametrize(
    ("mode", "model", "precision"),
    [
        ("data", "-", "-"),
        ("course", "-", "-"),
        ("reopen", "-", "-"),
        ("forward", "mlp", "bf16"),
        ("train", "cnn", "fp32"),
    ],
)
def test_each_mode_appends_one_measured_row(mode, model, precision, store, raw_x, tmp_path):
    out = tmp_path / "bench.csv"
    data = raw_x if mode in bench.BASELINE_MODES else store
    options = {
        "model": "cnn" if model == "-" else model,
        "precision": "fp32" if precision == "-" else precision,
    }
    assert cli(["throughput", *bench_args(mode, data, out, workers=1, **options)]) == 0
    assert cli(["throughput", *bench_args(mode, data, out, workers=1, **options)]) == 0

    rows = read_rows(out)
    assert list(rows.columns) == list(bench.COLUMNS)  # one header, then one row per call
    assert len(rows) == 2
    row = rows.iloc[0]
    assert (row["mode"], row["model"], row["precision"], row["device"]) == (mode, model, precision, "cpu")
    assert row["batch_size"] == BATCH and row["warmup"] == WARMUP and row["steps"] == STEPS
    assert row["workers"] == (1 if mode in bench.BASELINE_MODES else 0)  # the pipeline runs in-process
    assert row["status"] == "ok" and row["message"] == ""
    assert row["images"] == BATCH * STEPS  # warm-up steps are not counted
    assert float(row["img_per_s"]) == pytest.approx(row["images"] / float(row["seconds"]), rel=1e-3)
    assert 0 <= float(row["data_time_s"]) <= float(row["seconds"])
    assert float(row["peak_rss_mb"]) > 0 and row["peak_gpu_mem_mb"] == ""  # no GPU memory on a CPU
    assert row["torch_version"] == torch.__version__ and row["hostname"] and row["timestamp"]


def test_a_fast_configuration_is_timed_for_at_least_min_seconds(store, tmp_path):
    out = tmp_path / "bench.csv"
    assert cli(["throughput", *bench_args("data", store, out, **{"min-seconds": 0.3})]) == 0
    (row,) = read_rows(out).to_dict("records")
    assert float(row["seconds"]) >= 0.3
    assert row["steps"] > STEPS and row["warmup"] > WARMUP  # more steps than asked for: each is quick
    assert row["images"] == BATCH * row["steps"]  # the row says how many it timed


def test_one_time_costs_stay_out_of_the_timed_window():
    """The first batches of a fresh process are slow (first calls, first touches of fresh memory):
    a warm-up of min_seconds leaves them out; a few warm-up steps and a short window do not."""

    def batches():  # the first call alone outlasts min_seconds (a compile); two more settle
        for i in itertools.count():
            time.sleep({0: 0.3, 1: 0.2, 2: 0.2}.get(i, 0.0005))
            yield (torch.zeros(4),)

    def per_step(min_seconds):
        spec = bench.BenchSpec(mode="data", data="-", warmup=1, steps=4, min_seconds=min_seconds)
        measured = bench.timed_steps(batches(), lambda batch: None, spec)
        assert measured.images == 4 * measured.steps
        return measured.seconds / measured.steps

    assert per_step(0.25) < 0.005  # steady: under a millisecond a step
    assert per_step(0.0) > 0.02  # two of the four timed steps still pay the one-time cost


def test_train_row_splits_input_time_from_compute(store, tmp_path):
    out = tmp_path / "bench.csv"
    cli(["throughput", *bench_args("train", store, out, model="cnn")])
    cli(["throughput", *bench_args("forward", store, out, model="cnn")])
    train, forward = read_rows(out).to_dict("records")
    assert 0 < train["data_time_s"] < train["seconds"]  # the step waits for input, then computes
    assert forward["data_time_s"] < 0.05 * forward["seconds"]  # forward reuses one prepared batch


def test_train_mode_builds_one_loader_and_one_transform(store, monkeypatch):
    built = []
    for name in ("_loader", "_transform"):
        original = getattr(bench, name)
        monkeypatch.setattr(bench, name, lambda *a, _f=original, _n=name: built.append(_n) or _f(*a))
    spec = bench.BenchSpec(mode="train", data=str(store), batch_size=BATCH, warmup=WARMUP, steps=STEPS)
    assert bench.bench_row(spec)["status"] == "ok"
    assert sorted(built) == ["_loader", "_transform"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "forward", "precision": "fp16"}, "fp16 runs on CUDA only"),
        pytest.param({"mode": "train", "device": "cuda"}, "no CUDA", marks=NO_CUDA),
        ({"mode": "forward", "model": "vgg"}, "--model 'vgg': unknown"),
    ],
)
def test_invalid_combination_is_one_line_and_writes_nothing(options, message, store, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    mode = options.pop("mode")
    assert cli(["throughput", *bench_args(mode, store, out, **options)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pcamflow: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_missing_store_is_a_user_error(tmp_path, capsys):
    assert cli(["throughput", *bench_args("data", tmp_path / "nowhere", tmp_path / "b.csv")]) == 2
    assert "prepared data missing" in capsys.readouterr().err


class _Exploding(torch.nn.Module):
    def __init__(self, error: Exception):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_becomes_an_oom_row(mode, error, store, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "build_model", lambda name, settings: _Exploding(error))
    out = tmp_path / "bench.csv"
    assert cli(["throughput", *bench_args(mode, store, out)]) == 0
    (row,) = read_rows(out).to_dict("records")
    assert row["status"] == "oom" and "allocate" in row["message"]
    assert row["img_per_s"] == "" and row["seconds"] == ""  # no numbers for what was not measured


def test_an_unexpected_failure_is_an_error_row_and_a_failing_exit(store, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "build_model", lambda name, settings: _Exploding(ValueError("bad shape")))
    out = tmp_path / "bench.csv"
    assert cli(["throughput", *bench_args("forward", store, out)]) == 1
    (row,) = read_rows(out).to_dict("records")
    assert row["status"] == "error" and row["message"] == "ValueError: bad shape"


def test_a_csv_with_other_columns_is_refused(store, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    out.write_text("a,b\n1,2\n")
    assert cli(["throughput", *bench_args("data", store, out)]) == 2
    assert "other columns" in capsys.readouterr().err
    assert out.read_text() == "a,b\n1,2\n"


# ---- a partition's matrix ----

SETTINGS = {
    "models": ["mlp", "cnn"],
    "batch_sizes": [2, 4],
    "precisions": ["fp32", "fp16"],
    "modes": ["data", "course", "reopen", "forward", "train"],
    "warmup": 0,
    "steps": 1,
    "min_seconds": 0,
    "workers": 1,
}


def specs_for(device, store="STORE", raw_x="RAW", settings=SETTINGS):
    partition = {"device": device, "cpus": 2, "gpus": int(device == "cuda")}
    return bench.partition_specs(
        "p1", partition, settings, store=store, raw_x=raw_x, training={"cnn_width": 4}, threads=1
    )


def test_matrix_expands_models_and_precisions_only_where_they_apply():
    specs = specs_for("cpu")
    by_mode = {m: [s for s in specs if s.mode == m] for m in bench.MODES}
    for mode in ("data", "course", "reopen"):  # once per batch size, no model or precision
        assert [(s.model, s.precision, s.batch_size) for s in by_mode[mode]] == [("-", "-", 2), ("-", "-", 4)]
    for mode in ("forward", "train"):
        combos = {(s.model, s.precision, s.batch_size) for s in by_mode[mode]}
        assert combos == {(m, p, b) for m in ("mlp", "cnn") for p in ("fp32", "fp16") for b in (2, 4)}
    for mode in ("course", "reopen"):  # the course loader's two forms read the raw file in workers
        assert {s.data for s in by_mode[mode]} == {"RAW"} and {s.workers for s in by_mode[mode]} == {1}
    assert {s.data for s in specs if s.mode not in ("course", "reopen")} == {"STORE"}
    assert {(s.partition, s.device, s.threads) for s in specs} == {("p1", "cpu", 1)}


def test_cpu_partition_measures_fp32_and_skips_fp16_with_the_reason(store, raw_x, tmp_path):
    settings = dict(SETTINGS, models=["mlp"], batch_sizes=[2], modes=["course", "forward"])
    out = tmp_path / "p1.csv"
    bench.write_partition_csv(
        "p1",
        {"device": "cpu", "cpus": 1, "gpus": 0},
        settings,
        out,
        store=str(store),
        raw_x=str(raw_x),
        training={},
        threads=1,
    )
    rows = read_rows(out).set_index(["mode", "precision"])
    assert rows.loc[("course", "-"), "status"] == "ok"
    assert rows.loc[("forward", "fp32"), "status"] == "ok"
    skipped = rows.loc[("forward", "fp16")]
    assert skipped["status"] == "skipped" and "fp16 runs on CUDA only" in skipped["message"]
    assert skipped["img_per_s"] == "" and skipped["peak_rss_mb"] == ""


@NO_CUDA
def test_gpu_partition_without_cuda_is_skipped_with_a_clear_message(tmp_path, caplog):
    out = tmp_path / "gpu.csv"
    with caplog.at_level(logging.WARNING, logger="pcamflow.throughput.measure"):
        bench.write_partition_csv(
            "gpu_a100",
            {"device": "cuda", "cpus": 18, "gpus": 1},
            SETTINGS,
            out,
            store="nowhere",  # nothing is read: no measurement is attempted
            raw_x="nowhere_x.h5",
            training={},
            threads=1,
        )
    rows = read_rows(out)
    assert len(rows) == len(specs_for("cuda")) and set(rows["status"]) == {"skipped"}
    assert rows["message"].str.contains("no CUDA").all()
    assert set(rows["img_per_s"]) == {""}  # never faked numbers
    assert "partition gpu_a100 needs CUDA" in caplog.text


# ---- the course's loader: files kept open (course) or reopened per tile (reopen) ----


def test_course_dataset_cleans_and_normalises_each_tile_as_the_template_did(raw_x):
    dataset = CourseH5Dataset(raw_x)  # the template's mean and std, 0.5 per channel
    tile, label = dataset[1]
    assert tile.shape == (3, 96, 96) and tile.dtype == torch.float32
    assert label.item() == 0 and dataset[0][1].item() == 1
    assert tile.max().item() == pytest.approx(1.0)  # 400 was clipped to 255 -> (1 - 0.5) / 0.5
    assert torch.isfinite(dataset[0][0]).all()  # NaN -> 0


def count_h5_opens(monkeypatch) -> list:
    opened = []
    real = h5py.File

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    return opened


def test_the_course_loader_opens_each_file_once_and_keeps_it_open(raw_x, monkeypatch):
    course = CourseH5Dataset(raw_x)
    reopen = ReopenH5Dataset(raw_x)
    opened = count_h5_opens(monkeypatch)
    tiles = [course[i] for i in (3, 0, 7, 3)]
    assert sorted(opened) == sorted([raw_x.name, raw_x.name.replace("_x.h5", "_y.h5")])
    opened.clear()
    again = [reopen[i] for i in (3, 0, 7, 3)]
    assert len(opened) == 2 * 4  # the second baseline: both files for every tile
    for (a, la), (b, lb) in zip(tiles, again):  # the same tiles either way
        assert torch.equal(a, b) and la == lb


def test_a_dataset_opened_here_still_works_in_worker_processes(raw_x):
    dataset = CourseH5Dataset(raw_x)
    dataset[5]  # opened in this process before the workers fork: each worker opens its own
    order = [5, 1, 9, 2, 0, 7, 3, 11]
    in_workers = DataLoader(dataset, batch_size=4, sampler=order, num_workers=2)
    in_process = DataLoader(dataset, batch_size=4, sampler=order, num_workers=0)
    for (xa, ya), (xb, yb) in zip(in_workers, in_process, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    copy = pickle.loads(pickle.dumps(dataset))  # what a spawned worker gets: no open handles
    assert torch.equal(copy[5][0], dataset[5][0])


def test_course_sampler_balances_classes():
    labels = np.array([1] * 10 + [0] * 90, dtype=np.uint8)
    drawn = labels[list(balanced_sampler(labels, num_samples=4000, seed=0))]
    assert drawn.mean() == pytest.approx(0.5, abs=0.05)


def test_course_mode_needs_a_raw_x_file(tmp_path):
    with pytest.raises(PcamflowError, match="_x.h5"):
        CourseH5Dataset(tmp_path / "store")


@pytest.mark.parametrize("problem", ["directory", "parent is a file", "no permission"])
def test_an_unwritable_out_fails_before_measuring(problem, store, tmp_path, capsys, monkeypatch):
    from pcamflow import errors

    (tmp_path / "file").write_text("")
    out = {
        "directory": tmp_path,
        "parent is a file": tmp_path / "file" / "bench.csv",
        "no permission": tmp_path / "sub" / "bench.csv",
    }[problem]
    if problem == "no permission":  # chmod does not stop root, so the check's answer is faked
        monkeypatch.setattr(errors.os, "access", lambda path, mode: False)
    monkeypatch.setattr(bench, "bench_row", _must_not_run)
    assert cli(["throughput", *bench_args("data", store, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pcamflow: error: --out {out}:") and "\n" not in err
    assert not (tmp_path / "sub").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("the measurement ran although --out cannot be written")


def test_rows_carry_the_slurm_job_node_and_device_model_blank_outside_slurm(monkeypatch):
    from pcamflow import provenance

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"):
        monkeypatch.delenv(var, raising=False)
    spec = bench.BenchSpec(mode="data", data="store", partition="rome")
    row = bench.skipped_row(spec, "not measured")
    assert row["slurm_job_id"] is None and row["node"] is None
    assert row["device_model"] == provenance.cpu_model() and row["device_model"]
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "tcn1337")
    row = bench.skipped_row(spec, "not measured")
    assert (row["slurm_job_id"], row["node"]) == ("4242", "tcn1337")
    gpu_row = bench.skipped_row(bench.BenchSpec(mode="train", data="store", device="cuda"), "no GPU")
    expected = torch.cuda.get_device_name("cuda") if torch.cuda.is_available() else None
    assert gpu_row["device_model"] == expected


@pytest.mark.slow  # the whole benchmark script
def test_input_pipeline_benchmark_prints_the_input_share_and_the_pipeline_against_both_baselines(
    store, raw_x, tmp_path
):
    config = tmp_path / "config.yaml"
    config.write_text("training: {cnn_width: 4, mlp_hidden: [8]}\nthroughput: {workers: 1}\n")
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "input_pipeline.py"),
            *("--config", str(config), "--raw-x", str(raw_x), "--store", str(store)),
            *("--batch-sizes", "8", "--repeats", "1", "--train-batch-size", "8"),
            *("--warmup", "1", "--steps", "1", "--min-seconds", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),  # this checkout's pcamflow
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "warmup 1, steps 1, workers 1, min_seconds 0" in lines[0]
    assert lines[1] == "input share of a CPU training step, batch 8, 1 thread(s), fp32, channels_last False:"
    shares = [line for line in lines if "% of the step" in line]
    for model, size in (("cnn", "cnn_width 4"), ("mlp", "mlp_hidden [8]")):
        for accelerator in ("auto", "off"):
            assert any(
                re.search(
                    rf"{model} \({re.escape(size)}\), cpu_accelerator {accelerator} *: +[\d.]+% of the step",
                    line,
                )
                and re.search(r"goal <= 10%: (met|missed)", line)
                for line in shares
            ), (model, accelerator, shares)
    assert any(line.startswith("batch    8: pipeline") for line in lines)
    course = [line for line in lines if "course loader (files kept open)" in line]
    assert len(course) == 2 and all(
        re.search(r"pipeline \d+\.\dx \(rounds [\d.]+-[\d.]+x\)", line) for line in course
    )
    assert sum("reopen per tile" in line for line in lines) == 2
    assert any(line.strip().startswith("bounds: uint8 gather") for line in lines)
