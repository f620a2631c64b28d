"""benchmarks/gpu_check.py: the GPU table's configurations, its rows, and what it does without CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO

from pcamflow.throughput import measure as bench


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_69(gpu_check, capsys):
    assert gpu_check.main([]) == gpu_check.EXIT_NO_CUDA == 69
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no CUDA device" in err and "nothing measured" in err


def test_the_table_covers_both_resnets_every_precision_both_batch_sizes_and_input_paths(gpu_check):
    specs = gpu_check.specs(gpu_check.parse_args(["--device", "cuda"]), "STORE")
    combos = {(s.model, s.precision, s.batch_size, gpu_check.input_label(s)) for s in specs}
    assert len(specs) == len(combos) == 2 * 3 * 2 * 2
    assert {c[0] for c in combos} == {"resnet18", "resnet50"}
    assert {c[1] for c in combos} == {"fp32", "bf16", "fp16"}
    assert {c[2] for c in combos} == {256, 512}
    assert {c[3] for c in combos} == {"resident", "host"}
    assert all(s.mode == "train" and s.training["channels_last"] and s.device == "cuda" for s in specs)


def test_tiny_table_on_cpu_measures_both_input_paths(gpu_check, capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("| model |") :].strip().splitlines()
    assert table[0] == "| model | precision | batch | input | img/s | peak MB | input share | status |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert len(rows) == 3 * 2  # fp32, bf16, fp16 x resident, host
    measured = [r for r in rows if r[7] == "ok"]
    assert {(r[1], r[3]) for r in measured} == {
        (p, i) for p in ("fp32", "bf16") for i in ("resident", "host")
    }
    for row in measured:
        assert float(row[4].replace(",", "")) > 0 and float(row[5].replace(",", "")) > 0
        assert 0 <= float(row[6].rstrip("%")) <= 100
    skipped = [r for r in rows if r[1] == "fp16"]
    assert all(r[4] == "-" and r[7].startswith("skipped: precision fp16 runs on CUDA only") for r in skipped)


def test_a_row_shows_gpu_memory_on_cuda_and_no_figures_when_not_measured(gpu_check):
    spec = bench.BenchSpec(mode="train", data="S", model="resnet50", batch_size=512, device="cuda")
    ok = bench._row(
        spec,
        "ok",
        "",
        bench.Measurement(warmup=3, steps=10, seconds=2.0, images=5120, data_time_s=0.1, cpu_seconds=1),
    )
    ok.update(input="resident", peak_gpu_mem_mb=70123.4, peak_rss_mb=2000.0)
    cells = gpu_check.table_row(ok)
    assert (cells["img/s"], cells["peak MB"], cells["input share"]) == ("2,560", "70,123", "5.0%")
    oom = dict(bench._row(spec, "oom", "CUDA out of memory", peaks=False), input="host")
    cells = gpu_check.table_row(oom)
    assert cells["img/s"] == cells["peak MB"] == cells["input share"] == "-"
    assert cells["status"] == "oom: CUDA out of memory"
