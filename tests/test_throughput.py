"""The throughput summary (merge, bottleneck verdict, scaling plot) and the throughput rule."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from conftest import snakemake

from pcamflow.errors import PcamflowError
from pcamflow.throughput import measure as bench
from pcamflow.throughput.summary import (
    COMPUTE_BOUND,
    INPUT_BOUND,
    add_bottleneck,
    read_throughput,
    summarise_throughput,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(mode, img_per_s, *, partition="rome", batch_size=64, status="ok", seconds=1.0, data_time_s=0.0, **kw):
    values = dict.fromkeys(bench.COLUMNS)
    values.update(
        partition=partition,
        mode=mode,
        model="cnn" if mode in bench.MODEL_MODES else "-",
        precision="fp32" if mode in bench.MODEL_MODES else "-",
        device="cpu",
        batch_size=batch_size,
        status=status,
        img_per_s=img_per_s,
        seconds=seconds,
        data_time_s=data_time_s,
        **kw,
    )
    return values


def verdicts(rows):
    return add_bottleneck(pd.DataFrame(rows))["bottleneck"].tolist()


def test_train_is_input_bound_when_the_pipeline_cannot_feed_it_twice_over():
    rows = [
        row("data", 1000.0),
        row("train", 600.0),  # headroom 1.67: input takes longer than compute
        row("train", 100.0),  # headroom 10
        row("forward", 50.0),
    ]
    out = add_bottleneck(pd.DataFrame(rows))
    assert out["bottleneck"].tolist() == ["", INPUT_BOUND, COMPUTE_BOUND, ""]
    assert out["input_headroom"].tolist()[1:3] == [pytest.approx(1000 / 600, abs=1e-3), 10.0]


def test_data_rows_pair_only_with_the_same_partition_and_batch_size():
    rows = [
        row("data", 1000.0, partition="rome", batch_size=64),
        row("data", 10.0, partition="genoa", batch_size=64),  # another partition: ignored
        row("data", 10.0, partition="rome", batch_size=8),  # another batch size: ignored
        row("train", 100.0, partition="rome", batch_size=64),
    ]
    assert verdicts(rows)[-1] == COMPUTE_BOUND


def test_without_a_data_row_the_train_rows_own_input_share_decides():
    rows = [
        row("train", 100.0, seconds=2.0, data_time_s=1.2),  # 60 % waiting for input
        row("train", 100.0, seconds=2.0, data_time_s=0.2),
        row("data", None, status="skipped"),  # not measured: no pairing
    ]
    out = add_bottleneck(pd.DataFrame(rows))
    assert out["bottleneck"].tolist() == [INPUT_BOUND, COMPUTE_BOUND, ""]
    assert out["data_share"].tolist()[:2] == [0.6, 0.1]


def test_data_rows_carry_their_speedup_over_each_baseline_at_the_same_batch_size():
    rows = [
        row("data", 30000.0, batch_size=8),
        row("course", 1000.0, batch_size=8),  # the course loader
        row("reopen", 300.0, batch_size=8),  # the per-tile reopen
        row("data", 5000.0, batch_size=32),  # no baseline row at 32
        row("course", 10.0, batch_size=32, partition="genoa"),  # another partition: ignored
        row("course", None, batch_size=64, status="error"),
        row("data", 2000.0, batch_size=64),  # its course row failed and reopen was not run: no figure
        row("train", 500.0, batch_size=8),
    ]
    out = add_bottleneck(pd.DataFrame(rows))
    assert "speedup_vs_naive" not in out  # the column's old name (the mode was once called naive)
    course, reopen = out["speedup_vs_course"].tolist(), out["speedup_vs_reopen"].tolist()
    assert course[0] == 30.0 and reopen[0] == 100.0
    assert all(pd.isna(v) for v in course[1:] + reopen[1:])


def test_unmeasured_train_rows_get_no_verdict():
    rows = [row("data", 1000.0), row("train", None, status="oom", seconds=None, data_time_s=None)]
    assert verdicts(rows) == ["", ""]


def test_merge_keeps_every_partitions_rows(tmp_path):
    paths = []
    for name in ("rome", "gpu_a100"):
        paths.append(tmp_path / f"{name}.csv")
        pd.DataFrame([row("data", 1.0, partition=name)]).to_csv(paths[-1], index=False)
    merged = read_throughput(paths)
    assert merged["partition"].tolist() == ["rome", "gpu_a100"]


def test_merge_refuses_a_file_that_is_not_a_throughput_csv(tmp_path):
    bad = tmp_path / "rome.csv"
    bad.write_text("")
    with pytest.raises(PcamflowError, match="rome.csv: not a throughput CSV"):
        read_throughput([bad])


def test_summary_writes_the_table_and_a_plot_even_when_nothing_was_measured(tmp_path):
    source = tmp_path / "gpu.csv"
    pd.DataFrame([row("train", None, status="skipped", seconds=None)]).to_csv(source, index=False)
    summarise_throughput([source], tmp_path / "t.csv", tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC
    assert "bottleneck" in pd.read_csv(tmp_path / "t.csv").columns


# ---- the rules ----


def test_each_partition_job_asks_slurm_for_that_partition(workflow_dir):
    proc = snakemake(
        workflow_dir, "-n", "--configfile", "config/test.yaml", "--", "results/summary/throughput.csv"
    )
    jobs = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"wildcards: partition=(\w+)\n(?:\s+threads: \d+\n)?\s+resources: ([^\n]+)",
            proc.stdout + proc.stderr,
        )
    }
    assert set(jobs) == {"rome", "gpu_a100"}  # config/test.yaml's partitions
    assert "slurm_partition=rome, cpus_per_task=2, gpu=0" in jobs["rome"]
    assert "slurm_partition=gpu_a100, cpus_per_task=18, gpu=1" in jobs["gpu_a100"]


@pytest.mark.slow
def test_throughput_stage_on_the_test_config(finished_test_sweep):
    workflow_dir = finished_test_sweep  # the whole workflow on the test config (conftest)
    rows = pd.read_csv(workflow_dir / "results/summary/throughput.csv", keep_default_na=False)
    rome = rows[rows["partition"] == "rome"]
    # config/test.yaml: cnn, batch 8, fp32, modes data, course and train
    assert sorted(rome["mode"]) == ["course", "data", "train"] and set(rome["status"]) == {"ok"}
    assert (rome["img_per_s"].astype(float) > 0).all()
    assert rome.loc[rome["mode"] == "train", "bottleneck"].item() in (INPUT_BOUND, COMPUTE_BOUND)
    assert (workflow_dir / "results/summary/throughput_scaling.png").read_bytes()[:8] == PNG_MAGIC
    gpu = rows[rows["partition"] == "gpu_a100"]
    if not torch.cuda.is_available():
        assert len(gpu) == 3 and set(gpu["status"]) == {"skipped"} and set(gpu["img_per_s"]) == {""}
        log = (workflow_dir / "results/logs/throughput/gpu_a100.log").read_text()
        assert "partition gpu_a100 needs CUDA" in log


def test_throughput_memory_counts_the_prepared_store_not_the_raw_file(workflow_dir):
    from pcamflow.constants import raw_filename
    from pcamflow.data.store import store_files

    def sparse(path, mb):  # sizes without writing the bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(mb * 2**20)

    raw = workflow_dir / "results/data/synthetic"  # config/test.yaml: dataset synthetic
    for kind, mb in (("x", 4000), ("y", 1)):
        sparse(raw / raw_filename("train", kind), mb)
    store = store_files(workflow_dir / "results/prepared", ["train"])
    for path in store:
        sparse(path, 500 // len(store))
    proc = snakemake(
        workflow_dir,
        *("-n", "--configfile", "config/test.yaml", "--allowed-rules", "throughput"),
        *("--", "results/throughput/rome.csv"),
    )
    (mem_mb,) = re.findall(r"mem_mb=(\d+)", proc.stdout + proc.stderr)
    store_mb = sum(p.stat().st_size for p in store) / 2**20
    assert int(mem_mb) == 3000 + int(1.2 * store_mb)  # the 4000 MB raw file is read a tile at a time
