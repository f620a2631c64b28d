"""The optional compiled CPU pass (`training.cpu_accelerator`): imported only when used, switchable,
and on any compile, cache or JIT-disabled error a fallback to the torch ops (or a recompile), never
a failed run. Its values are compared with the torch ops in test_pipeline.py."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from train_fixtures import write_store

from pcamflow.config import validate_training
from pcamflow.data import transforms
from pcamflow.data.store import load_split, load_stats
from pcamflow.data.transforms import BatchTransform
from pcamflow.errors import PcamflowError
from pcamflow.rundir import TIMING_FIELDS
from pcamflow.training.train import run_training

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

ACCELERATOR_LINE = "training.cpu_accelerator"  # every warning of the accelerator starts with the key


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 48, "valid": 16})


def run_config(store, **training) -> dict:
    settings = {"epochs": 1, "cnn_width": 4, "threads": 1, "device": "cpu", **training}
    return {
        "data": str(store),
        "model": "cnn",
        "lr": 0.003,
        "batch_size": 16,
        "optimizer": "adam",
        "seed": 3,
        "training": settings,
    }


def python(code: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter on this checkout, with `env` added to the environment."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=600
    )


def train_command(store, out, **env) -> subprocess.CompletedProcess:
    """`pcamflow train --config run.yaml --out DIR` as a user runs it, with `env` added."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(run_config(store)))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **env)
    cmd = [sys.executable, "-m", "pcamflow.cli", "train", "--config", str(cfg), "--out", str(out / "run")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def accelerator_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if ACCELERATOR_LINE in line]


def history(run_dir) -> dict:
    data = json.loads((run_dir / "history.json").read_text())
    epochs = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in data["epochs"]]
    return {**data, "epochs": epochs}


def test_no_data_training_or_evaluation_module_imports_numba():
    """A GPU job never loads numba or llvmlite: they are imported only when the accelerator runs."""
    proc = python(
        """
        import importlib, pkgutil, sys
        import pcamflow.data, pcamflow.training, pcamflow.evaluation
        for package in (pcamflow.data, pcamflow.training, pcamflow.evaluation):
            for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if module.name != "pcamflow.data.cpu_accelerator":
                    importlib.import_module(module.name)
        from pcamflow import provenance
        provenance.versions()  # run.json records numba's version without importing it
        import torch
        from pcamflow.data.transforms import BatchTransform
        stats = {"mean": [0.5] * 3, "std": [0.2] * 3}
        BatchTransform(stats, cpu_accelerator="off")(torch.zeros((4, 8, 8, 3), dtype=torch.uint8), train=True)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_off_runs_the_torch_ops_and_gives_the_auto_runs_history_bit_for_bit(store, tmp_path, monkeypatch):
    run_training(run_config(store), tmp_path / "auto")
    assert transforms.cpu_accelerator() is not None  # the auto run used the compiled pass

    def never(*args, **kwargs):
        raise AssertionError("cpu_accelerator: off ran the compiled pass")

    monkeypatch.setattr(transforms.cpu_accelerator(), "d4_normalise", never)
    run_training(run_config(store, cpu_accelerator="off"), tmp_path / "off")
    assert history(tmp_path / "off") == history(tmp_path / "auto")


def test_the_compiled_pass_leaves_torchs_threads_as_they_were():
    """numba's threads start on the first call; they must not take torch's OpenMP threads with them
    (a changed thread count changes a run's floating-point sums)."""
    proc = python(
        """
        import torch
        torch.set_num_threads(1)
        from pcamflow.data import transforms
        x = torch.zeros((16, 8, 8, 3), dtype=torch.uint8)
        transforms.BatchTransform({"mean": [0.5] * 3, "std": [0.2] * 3})(x, train=True)
        assert transforms.cpu_accelerator() is not None
        print(torch.get_num_threads())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1"]


@pytest.mark.slow  # a whole `pcamflow train` in a fresh process without the JIT
def test_a_run_with_the_jit_disabled_completes_on_the_torch_ops_with_one_warning(store, tmp_path):
    proc = train_command(store, tmp_path / "nojit", NUMBA_DISABLE_JIT="1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "nojit" / "run" / "history.json").exists()
    [line] = accelerator_lines(proc)
    assert "NUMBA_DISABLE_JIT is set" in line and "using the torch ops" in line


def test_without_numba_the_transform_falls_back_once_to_the_same_values(store):
    proc = python(
        f"""
        import sys
        sys.modules["numba"] = None  # as if numba were not installed: its import raises ImportError
        import numpy as np, torch
        from pcamflow.data.store import load_split, load_stats
        from pcamflow.data.transforms import BatchTransform
        x = torch.from_numpy(np.array(load_split({str(store)!r}, "train").x[:8]))
        stats = load_stats({str(store)!r})
        for _ in range(3):
            auto = BatchTransform(stats)(x, train=True, generator=torch.Generator().manual_seed(1))
        off = BatchTransform(stats, cpu_accelerator="off")(x, train=True, generator=torch.Generator().manual_seed(1))
        assert torch.equal(auto, off)
        """
    )
    assert proc.returncode == 0, proc.stderr
    [line] = accelerator_lines(proc)
    assert "ModuleNotFoundError: import of numba halted" in line and "using the torch ops" in line


READY = """
    from pcamflow.data import transforms
    accelerator = transforms.cpu_accelerator()
    assert accelerator is not None
    print(sum(sum(p.stats.cache_hits.values()) for p in accelerator.compiled_passes()))
    """  # prints how many compiled signatures came from numba's cache


def damage(cache, suffix: str) -> None:
    files = sorted(cache.rglob(f"*.{suffix}"))
    assert files, f"numba wrote no .{suffix} file under {cache}"
    for path in files:
        path.write_bytes(b"garbage, not a pickle")


@pytest.mark.slow  # compiles the pass twice in fresh processes (about 20 s)
def test_a_damaged_cache_file_is_compiled_afresh_once_and_cached_again(store, tmp_path):
    cache = tmp_path / "numba-cache"
    first = python(READY, NUMBA_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["0"]  # both loops (both layouts) compiled, and cached

    damage(cache, "nbc")  # a data file (the reported case: "UnpicklingError: could not find MARK")
    proc = train_command(store, tmp_path / "damaged", NUMBA_CACHE_DIR=str(cache))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "damaged" / "run" / "history.json").exists()
    [line] = accelerator_lines(proc)
    assert "UnpicklingError" in line and "compiled afresh and cached again" in line

    damage(cache, "nbi")  # the index
    proc = python(READY, NUMBA_CACHE_DIR=str(cache))
    assert proc.returncode == 0, proc.stderr
    [line] = accelerator_lines(proc)
    assert "unreadable" in line and "compiled afresh and cached again" in line

    again = python(READY, NUMBA_CACHE_DIR=str(cache))  # the next job loads the rewritten cache
    assert again.returncode == 0, again.stderr
    assert accelerator_lines(again) == [] and again.stdout.split() == ["4"]  # both loops, both layouts


def test_a_failed_compile_falls_back_to_the_torch_ops_with_one_warning(store, monkeypatch, caplog):
    from pcamflow.data import cpu_accelerator

    def broken():
        raise RuntimeError("LLVM ERROR: cannot select")

    monkeypatch.setattr(cpu_accelerator, "compiled_passes", broken)
    transforms.cpu_accelerator.cache_clear()
    try:
        x = torch.from_numpy(np.array(load_split(store, "train").x[:4]))
        stats = load_stats(store)
        outputs = [BatchTransform(stats)(x, train=False) for _ in range(3)]
        assert all(
            torch.equal(out, BatchTransform(stats, cpu_accelerator="off")(x, train=False)) for out in outputs
        )
    finally:
        transforms.cpu_accelerator.cache_clear()  # the next test gets the real compiled pass
    lines = [r.getMessage() for r in caplog.records if ACCELERATOR_LINE in r.getMessage()]
    assert lines == [
        "training.cpu_accelerator: the compiled CPU pass cannot run here (RuntimeError: LLVM ERROR: "
        "cannot select); using the torch ops"
    ]


def test_a_bare_off_in_yaml_means_off_and_other_values_are_refused_by_key():
    stats = {"mean": [0.5] * 3, "std": [0.2] * 3}
    settings = validate_training(yaml.safe_load("cpu_accelerator: off"), source="run.yaml")
    assert settings["cpu_accelerator"] is False  # YAML 1.1 reads a bare off as false
    assert not BatchTransform(stats, cpu_accelerator=settings["cpu_accelerator"]).accelerated
    assert validate_training({}, source="run.yaml")["cpu_accelerator"] == "auto"
    with pytest.raises(PcamflowError, match=r"run.yaml: key 'cpu_accelerator': 'on' is not one of"):
        validate_training({"cpu_accelerator": "on"}, source="run.yaml")
    with pytest.raises(ValueError, match="cpu_accelerator must be one of"):
        BatchTransform(stats, cpu_accelerator="on")
