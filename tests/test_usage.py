"""What a run cost (pcamflow.throughput.usage): parsing sacct's fields, and the benchmark files outside Slurm."""

from __future__ import annotations

import pytest

from pcamflow import slurm
from pcamflow.throughput import usage
from pcamflow.throughput.cost import SBU_PER_GPU_HOUR, Line

RULES = ["audit", "plot_grid_point", "train"]


def test_allocation_and_rule_from_what_sacct_shows():
    assert slurm.allocation("billing=18,cpu=18,gres/gpu=1,mem=120G,node=1") == {
        "cpus": 18,
        "mem_mb": 120 * 1024,
        "gpus": 1,
    }
    assert slurm.allocation("cpu=2,mem=3500M,node=1")["mem_mb"] == 3500
    assert usage.rule_of("rule_train_wildcards_cnn_0.001_32_adam_1", RULES) == "train"
    assert usage.rule_of("rule_plots_plot_grid_point", RULES) == "plot_grid_point"  # a group job


def test_slurm_usage_charges_gpu_hours_and_sums_retries():
    jobs = [
        {
            "Comment": "rule_train_wildcards_a",
            "ElapsedRaw": "1800",
            "AllocTRES": "cpu=18,gres/gpu=1,mem=120G",
        },
        {
            "Comment": "rule_train_wildcards_a",
            "ElapsedRaw": "3600",
            "AllocTRES": "cpu=18,gres/gpu=1,mem=120G",
        },
    ]
    (row,) = usage.slurm_usage(jobs, RULES).to_dict("records")
    assert (row["rule"], row["jobs"], row["elapsed_h"], row["gpu_h"]) == ("train", 2, 1.5, 1.5)
    assert row["sbu"] == pytest.approx(1.5 * SBU_PER_GPU_HOUR)


def test_outside_slurm_the_benchmark_files_give_cpu_hours_beside_the_estimate(tmp_path):
    (tmp_path / "train" / "point").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "train" / "point" / "seed~1.tsv").write_text(
        header + "3600\t1:00:00\t1\t1\t1\t1\t0\t0\t50\t7200\n"
    )
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "train.tsv").write_text(header + "360\t0:06:00\t1\t1\t1\t1\t0\t0\t50\t360\n")
    estimate = [Line("train cnn", 1, 2.0, "gpu_a100", rules=("train",))]
    table = usage.with_estimate(usage.benchmark_usage(tmp_path), estimate).set_index("rule")
    assert table.loc["train", "cpu_h"] == 2.0 and table.loc["train", "elapsed_h"] == 1.0
    assert table.loc["audit", "cpu_h"] == pytest.approx(0.1)
    assert table.loc["train", "estimate_sbu"] == 2 * SBU_PER_GPU_HOUR
    assert table.loc["total", "jobs"] == 2 and set(table["source"]) == {"benchmark"}
    assert table["sbu"].isna().all()  # no SBU without Slurm's allocations
