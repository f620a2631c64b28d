"""Shared test helpers: a private copy of the workflow and a way to run Snakemake in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "report", "config", "src", "profiles", "envs")


def make_workflow_copy(dest: Path) -> Path:
    """A directory that looks like the repository (symlinks) but keeps results/ and .snakemake/ apart."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        if (REPO / part).exists():
            (dest / part).symlink_to(REPO / part)
    return dest


@pytest.fixture
def workflow_dir(tmp_path) -> Path:
    return make_workflow_copy(tmp_path / "wf")


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 1200
) -> subprocess.CompletedProcess:
    """Run Snakemake in workdir with this interpreter; on failure show its output."""
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def pcamflow(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the `pcamflow` command line as a user would."""
    cmd = [sys.executable, "-m", "pcamflow.cli", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"pcamflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def restore_torch_globals():
    """Training sets torch's thread count and determinism; keep other tests unaffected."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def tiny_config(throughput_mode: str) -> dict:
    """The whole pipeline in about a minute on 2 cores: one grid point, one seed, one epoch, and a
    one-step throughput study in `throughput_mode`."""
    return {
        "synthetic": {"n_train": 200, "n_valid": 100, "n_test": 100},
        "seeds": [1],
        "grid": {"model": ["mlp"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]},
        "training": {"epochs": 1, "mlp_hidden": [8]},
        "evaluate": {"bootstrap": 20},
        "partitions": {"rome": {"device": "cpu", "cpus": 1, "gpus": 0}},
        "throughput": {
            "models": ["mlp"],
            "batch_sizes": [8],
            "precisions": ["fp32"],
            "modes": [throughput_mode],
            "steps": 1,
        },
    }
