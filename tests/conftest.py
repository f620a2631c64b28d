"""Shared test helpers: a private copy of the workflow and a way to run Snakemake in it."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from launcher import run_module

REPO = Path(__file__).resolve().parents[1]
# The tests start hundreds of Python processes: where PYTHONDONTWRITEBYTECODE is set (this machine
# and CI set it) each would compile the checkout's modules from source again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# A test suite started in the background (`make test &`, some CI runners) inherits SIGINT and SIGQUIT
# ignored, and so would every command it starts: Snakemake would then never see the Ctrl-C (SIGINT)
# that tests send it as a user at a terminal does. The commands get the terminal's dispositions.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "report", "config", "src", "profiles", "envs")


def make_workflow_copy(dest: Path, repo: Path = REPO) -> Path:
    """A directory that looks like the repository (symlinks) but keeps results/ and .snakemake/ apart."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        if (repo / part).exists():
            (dest / part).symlink_to(repo / part)
    return dest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Slurm tests first, then those that read the shared sweep, then the rest. pytest-xdist
    (`--dist loadfile --no-loadscope-reorder`, as make runs it) hands whole files to its workers in
    this order: the Slurm tests, which mostly wait on the scheduler, run beside everything else, and
    the shared sweep is built while they start."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slurm"):
            return 0
        return 1 if "finished_test_sweep" in item.fixturenames else 2

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A test that runs the CLI or a rule script in-process configures the root logger with a
    handler on that test's captured stderr, which pytest closes afterwards: later tests would log
    "--- Logging error ---" tracebacks into their own captured output. Each test gets the root
    logger back as it found it."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture
def workflow_dir(tmp_path) -> Path:
    return make_workflow_copy(tmp_path / "wf")


# The run of the test config that fails on every attempt in finished_test_sweep (fault injection).
TEST_SWEEP_FAILING_RUN = "results/runs/model~mlp/lr~0.001/batch_size~32/optimizer~adam/seed~2"


@pytest.fixture(scope="session")
def finished_test_sweep(tmp_path_factory) -> Path:
    """The whole workflow on config/test.yaml, run once per session in a private copy and shared by
    the end-to-end tests that only read its outputs (one that changes anything works in
    copy_workflow(...)). As runs of a real sweep do, one run (TEST_SWEEP_FAILING_RUN) fails on
    every attempt: on both of the two that `--retries 1` gives it. The run's terminal output is kept
    in terminal.txt."""
    from pcamflow.training.attempt import INJECT_ENV

    def run_sweep(base: Path) -> None:
        workdir = make_workflow_copy(base / "wf")
        with mock.patch.dict(os.environ, {INJECT_ENV: f"*{TEST_SWEEP_FAILING_RUN}"}):
            run = snakemake(workdir, "--cores", "2", "--retries", "1", "--configfile", "config/test.yaml")
        (workdir / "terminal.txt").write_text(run.stdout)

    return built_once(tmp_path_factory, "test_sweep", run_sweep) / "wf"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory that build(directory) fills once per test session. Under pytest-xdist each worker
    has its own session fixtures, so the workers share one directory in the session's base temp:
    the first to ask builds it while the others wait on a lock."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    path = tmp_path_factory.getbasetemp().parent / name
    done, failed = path.with_name(f"{name}.done"), path.with_name(f"{name}.failed")
    with open(path.with_name(f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(f"{name} failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            try:
                path.mkdir()
                build(path)
            except BaseException as exc:
                failed.write_text(str(exc))
                raise
            done.touch()
    return path


def copy_workflow(workdir: Path, dest: Path) -> Path:
    """A copy of a workflow directory with its results and Snakemake's records (mtimes kept)."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 1200, launcher=("-m", "snakemake")
) -> subprocess.CompletedProcess:
    """Run Snakemake in workdir with this interpreter; on failure show its output."""
    argv = ("--directory", str(workdir), *args)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    if launcher[0] == "-m":
        proc = run_module(launcher[1], argv, cwd=workdir, env=env, timeout=timeout)
    else:
        cmd = [sys.executable, *launcher, *argv]
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def pcamflow(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the `pcamflow` command line as a user would."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = run_module("pcamflow.cli", args, env=env, timeout=timeout, **kw)
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
