"""benchmarks/planning.py: the sweeps it plans are the sizes asked for, and it prints a dry run's cost."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import REPO

from pcamflow.config import grid_points, validate_config

SCRIPT = REPO / "benchmarks" / "planning.py"


@pytest.fixture(scope="module")
def planning():
    spec = importlib.util.spec_from_file_location("planning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("runs", [2, 250, 1000, 4000])
def test_a_sweep_config_has_exactly_the_runs_asked_for_as_its_own_experiment(planning, runs):
    config = validate_config(planning.sweep_config(REPO, runs))
    assert len(grid_points(config)) * len(config["seeds"]) == runs
    assert config["experiment"] == f"planning-{runs}"
    assert config["dataset"] == "pcam"  # the real study's config, only its grid and seeds changed


def test_a_number_of_runs_the_grid_cannot_make_is_one_clear_error(planning):
    with pytest.raises(SystemExit, match=r"--runs 7: give a positive multiple of 2"):
        planning.grid_shape(7)


@pytest.mark.slow  # the whole benchmark script
def test_the_benchmark_prints_jobs_wall_time_cpu_time_and_memory_of_each_dry_run():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "4"], capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stderr
    rows = {
        m[1]: (int(m[2]), float(m[3]), float(m[4]), float(m[5]))
        for m in re.finditer(
            r"^\s*(4 runs|default config)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s", run.stdout, re.M
        )
    }
    assert set(rows) == {"4 runs", "default config"}, run.stdout
    for jobs, wall, cpu, rss_mb in rows.values():
        assert jobs > 4 and wall > 0 and cpu > 0 and rss_mb > 50
