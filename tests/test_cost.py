"""`pcamflow cost` and config/pcam.yaml: the real experiment's price on Snellius, before it runs."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from conftest import REPO, pcamflow

from pcamflow import constants
from pcamflow.config import grid_points, validate_config
from pcamflow.throughput.cost import (
    JOB_OVERHEAD_H,
    ROME_MIN_CORES,
    SBU_PER_GPU_HOUR,
    Line,
    estimate,
    memory_warnings,
    run_hours,
)
from pcamflow.training.model_cost import model_cost

PCAM_YAML = REPO / "config" / "pcam.yaml"
COURSE_GRID = {"lr": [1e-3, 1e-4, 1e-5], "batch_size": [32, 64, 128], "optimizer": ["adam", "sgd"]}


def _config(**overrides) -> dict:
    base = {"grid": {"model": ["cnn", "resnet18"], "lr": [1e-3], "batch_size": [64], "optimizer": ["adam"]}}
    return validate_config({**base, **overrides})


def _training_lines(lines: list[Line]) -> dict[str, Line]:
    return {line.item.split()[1]: line for line in lines if line.item.startswith("train ")}


def test_training_cost_scales_with_seeds_and_grid_points():
    one = _training_lines(estimate(_config(seeds=[1])))
    three = _training_lines(estimate(_config(seeds=[1, 2, 3])))
    wider = _training_lines(estimate(_config(seeds=[1], grid={**_config()["grid"], "lr": [1e-3, 1e-4]})))
    for model in ("cnn", "resnet18"):
        assert three[model].jobs == 3 * one[model].jobs
        assert three[model].gpu_hours == pytest.approx(3 * one[model].gpu_hours)
        assert wider[model].jobs == 2 * one[model].jobs
        assert wider[model].sbu == pytest.approx(2 * one[model].sbu)


def test_training_time_scales_with_epochs():
    point = {"model": "resnet18", "lr": 1e-3, "batch_size": 64, "optimizer": "adam"}
    hours = {
        epochs: run_hours(point, _config(training={"epochs": epochs})["training"], 262_144) - JOB_OVERHEAD_H
        for epochs in (1, 4)
    }
    assert hours[4] == pytest.approx(4 * hours[1])
    fewer_tiles = run_hours(point, _config(training={"epochs": 1})["training"], 131_072) - JOB_OVERHEAD_H
    assert fewer_tiles < hours[1]


def test_mixed_precision_and_bigger_models_cost_more_or_less_as_expected():
    point = {"model": "resnet18", "lr": 1e-3, "batch_size": 128, "optimizer": "adam"}
    fp32 = run_hours(point, _config(training={"amp": "none"})["training"], 262_144)
    bf16 = run_hours(point, _config(training={"amp": "bf16"})["training"], 262_144)
    assert bf16 < fp32
    cnn = run_hours({**point, "model": "cnn"}, _config()["training"], 262_144)
    assert cnn < fp32


def test_model_cost_counts_the_built_model():
    training = validate_config({"training": {"mlp_hidden": [64]}})["training"]
    inputs = 96 * 96 * 3
    assert model_cost("mlp", training).macs == inputs * 64 + 64 * 2
    assert model_cost("resnet18", training).macs > model_cost("cnn", training).macs


def test_sbu_rule():
    assert Line("gpu", jobs=2, hours_per_job=1.5, partition="gpu_a100").sbu == 3 * SBU_PER_GPU_HOUR
    assert Line("gpu", jobs=2, hours_per_job=1.5, partition="gpu_a100").gpu_hours == 3
    # rome charges at least 1/8 node (16 cores) per job, and every core asked for beyond that
    assert Line("cpu", jobs=1, hours_per_job=1, partition="rome", cores=4).sbu == ROME_MIN_CORES
    assert Line("cpu", jobs=1, hours_per_job=2, partition="rome", cores=32).sbu == 64
    assert Line("cpu", jobs=1, hours_per_job=2, partition="rome", cores=32).gpu_hours == 0


def test_memory_warning_for_batches_that_do_not_fit_an_a100():
    big = _config(grid={"model": ["resnet50"], "lr": [1e-3], "batch_size": [512], "optimizer": ["adam"]})
    assert any("resnet50 at batch 512" in w for w in memory_warnings(big))
    assert memory_warnings(_config(training={"amp": "bf16"})) == []


# ---- config/pcam.yaml ----


def test_pcam_config_validates_and_holds_the_course_grid():
    cfg = validate_config(yaml.safe_load(PCAM_YAML.read_text()), source=str(PCAM_YAML))
    assert cfg["dataset"] == "pcam"
    assert cfg["seeds"] == [42, 43, 44]
    points = {tuple(p[k] for k in ("model", "lr", "batch_size", "optimizer")) for p in grid_points(cfg)}
    for model in ("mlp", "cnn"):
        course = itertools.product([model], *COURSE_GRID.values())
        assert set(course) <= points, model
    assert any(p[0].startswith("resnet") for p in points)
    assert cfg["partitions"]["rome"] == {"device": "cpu", "cpus": 16, "gpus": 0}
    assert cfg["partitions"]["gpu_a100"] == {"device": "cuda", "cpus": 18, "gpus": 1}
    assert cfg["training"]["amp"] == "bf16" and cfg["training"]["channels_last"]
    bench = cfg["throughput"]
    assert min(bench["batch_sizes"]) == 1 and max(bench["batch_sizes"]) == 512
    assert set(bench["precisions"]) == {"fp32", "bf16", "fp16"}
    assert set(bench["modes"]) == {"data", "course", "forward", "train"}


def test_cost_command_prints_a_consistent_table_for_pcam_yaml():
    proc = pcamflow("cost", "--config", str(PCAM_YAML))
    rows = re.findall(
        r"^(.+?)\s+(\d+)\s+([\d.]+)\s+(gpu_a100|rome)\s+([\d.]+)\s+([\d,]+)$", proc.stdout, re.M
    )
    total = re.search(r"^total\s+(\d+)\s+([\d.]+)\s+([\d,]+)$", proc.stdout, re.M)
    assert rows and total, proc.stdout
    cfg = validate_config(yaml.safe_load(PCAM_YAML.read_text()))
    train_jobs = sum(int(r[1]) for r in rows if r[0].startswith("train "))
    assert train_jobs == len(grid_points(cfg)) * len(cfg["seeds"])
    gpu_hours = sum(float(r[4]) for r in rows)
    assert float(total[2]) == pytest.approx(gpu_hours, abs=0.1 * len(rows))
    gpu_sbu = sum(int(r[5].replace(",", "")) for r in rows if r[3] == "gpu_a100")
    assert gpu_sbu == pytest.approx(SBU_PER_GPU_HOUR * gpu_hours, rel=0.02)
    assert f"{constants.FULL_SIZES['train']:,} train tiles" in proc.stdout


def test_cost_command_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epoch: 3}\n")
    proc = pcamflow("cost", "--config", str(bad), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"pcamflow: error: {bad}: unknown key 'epoch' in 'training'"
    )


@pytest.mark.parametrize("tiles", ["0", "-5"])
def test_cost_command_refuses_a_train_tiles_below_one(tiles):
    proc = pcamflow("cost", "--config", str(PCAM_YAML), "--train-tiles", tiles, check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"pcamflow: error: --train-tiles: must be a positive number of tiles, got {tiles}"
    )
