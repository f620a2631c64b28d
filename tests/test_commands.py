"""The commands the README gives, typed exactly as written in the repository root (no --cores).

Snakemake's workflow profile (profiles/default) supplies the local defaults; a profile named on the
command line (profiles/snellius) is left as it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_workflow_copy, tiny_config

SNAKEMAKE = Path(sys.executable).with_name("snakemake")  # the command a user types
TINY_DEFAULT = tiny_config("data")
PLAN_LINE = re.compile(r"^(?:(?:local)?rule \w+:|    (?:output|wildcards|resources|threads): .*)$", re.M)


@pytest.fixture
def repo_root(tmp_path) -> Path:
    """A copy of the repository whose config/config.yaml (the Snakefile's configfile) is tiny."""
    root = make_workflow_copy(tmp_path / "repo")
    (root / "config").unlink()
    (root / "config").mkdir()
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(TINY_DEFAULT, sort_keys=False))
    return root


def typed(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake ARGS` as typed in the repository root; its first lines are printed (pytest -s)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    proc = subprocess.run(
        [str(SNAKEMAKE), *args], cwd=root, capture_output=True, text=True, env=env, timeout=900
    )
    print(f"$ snakemake {' '.join(args)}  (exit {proc.returncode})")
    print("\n".join((proc.stderr + proc.stdout).splitlines()[:6]))
    assert proc.returncode == 0, f"snakemake {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def plan(output: str) -> list[str]:
    """A dry run's jobs with their outputs, wildcards, resources and threads, in a stable order."""
    lines = [_sorted_items(line) if "resources:" in line else line for line in PLAN_LINE.findall(output)]
    return sorted(re.split(r"\n(?=(?:local)?rule \w+:)", "\n".join(lines)))


def _sorted_items(line: str) -> str:
    name, items = line.split(": ", 1)
    return f"{name}: {', '.join(sorted(items.split(', ')))}"


@pytest.mark.slow
def test_the_readme_commands_work_as_typed(repo_root):
    # plan, locally and on Snellius (no cluster here: a dry run is all that can run)
    assert "rule train:" in typed(repo_root, "-n").stdout
    # an empty Slurm config: any Slurm command fails at once (a missing one: each retries for a minute)
    slurm = {"SLURM_CONF": "/dev/null", "SBATCH_ACCOUNT": ""}
    snellius = typed(repo_root, "-n", "--profile", "profiles/snellius", env=slurm).stdout
    assert re.search(r"rule train:(\n    .*)*\n    resources: .*slurm_partition=gpu_a100", snellius)
    # the workflow profile leaves the Snellius profile as it is (threads and resources included)
    without = typed(
        repo_root, "-n", "--profile", "profiles/snellius", "--workflow-profile", "none", env=slurm
    )
    assert plan(snellius) == plan(without.stdout)

    # run: one file, then everything; then the report
    typed(repo_root, "results/summary/metrics_avg.csv")
    assert (repo_root / "results/summary/metrics_avg.csv").exists()
    assert not (repo_root / "results/summary/champion.json").exists()
    typed(repo_root)
    for output in (
        "results/summary/champion.json",
        "results/summary/evaluate.json",
        "results/handover.tar.gz",
    ):
        assert (repo_root / output).exists(), output
    assert "Nothing to be done" in typed(repo_root, "-n").stdout
    typed(repo_root, "--report")
    assert (repo_root / "report.html").stat().st_size > 0
