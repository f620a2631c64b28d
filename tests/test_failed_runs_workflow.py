"""A sweep in which one run fails on every attempt: the rest is summarised, evaluated and reported,
the failure is named with its reason, and one command retries only that run. The crash is the shared
sweep's (conftest.finished_test_sweep); a SIGKILL on every attempt runs a tiny sweep of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO, TEST_SWEEP_FAILING_RUN, copy_workflow, snakemake

from pcamflow.training.attempt import INJECT_ENV, INJECT_SIGNAL_ENV

# Two grid points (lr 0.001 and 0.01), one seed, one epoch: the smallest sweep with a champion.
TINY = {
    "synthetic": {"n_train": 200, "n_valid": 100, "n_test": 100},
    "seeds": [1],
    "grid": {"model": ["mlp"], "lr": [0.001, 0.01], "batch_size": [32], "optimizer": ["adam"]},
    "training": {"epochs": 1, "mlp_hidden": [8]},
    "evaluate": {"bootstrap": 20},
}
OVERVIEW = "results/summary/overview.txt"
FAILING = "results/runs/model~mlp/lr~0.01/batch_size~32/optimizer~adam/seed~1"
# the shared sweep's (config/test.yaml): its failing run and the other seed of that grid point
SWEEP_FAILING = TEST_SWEEP_FAILING_RUN
SWEEP_HEALTHY = "results/runs/model~mlp/lr~0.001/batch_size~32/optimizer~adam/seed~1"


def run_shell(workdir, command: str, **env) -> subprocess.CompletedProcess:
    """A command line as a user types it in the workflow directory, `snakemake` being this interpreter's."""
    snakemake_cmd = f"{sys.executable} -m snakemake --directory {workdir}"
    proc = subprocess.run(
        ["bash", "-c", command.replace("snakemake", snakemake_cmd, 1)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src"), **env),
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_a_run_failing_every_attempt_is_named_and_a_retry_trains_only_it(finished_test_sweep, tmp_path):
    # the shared sweep (conftest): its run TEST_SWEEP_FAILING_RUN crashed on both of its attempts
    # (`--retries 1`; a node that keeps dying, say); the retry below changes a copy of it
    workflow_dir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    terminal = (workflow_dir / "terminal.txt").read_text()
    assert "pcamflow: the sweep is done." in terminal
    assert "champion   model~cnn/lr~0.001/batch_size~32/optimizer~adam" in terminal  # mlp lost a seed
    assert "test AUC" in terminal and "test F2" in terminal and "95% bootstrap interval" in terminal
    assert f"{SWEEP_FAILING}: InjectedFailure: failure injected by {INJECT_ENV}" in terminal
    assert "(2 attempts)" in terminal  # retried once before it was recorded as failed
    retry = "snakemake --forcerun $(cat results/summary/failed_runs.txt)"
    assert (
        retry in terminal and "snakemake --report report.html" in terminal and "pcamflow status" in terminal
    )

    runs = pd.read_csv(workflow_dir / "results/summary/runs.csv")
    failed = runs.loc[runs["status"] == "failed"]
    assert failed["run_dir"].tolist() == [SWEEP_FAILING] and failed["attempts"].tolist() == [2]
    assert failed["failure_reason"].str.startswith("InjectedFailure: failure injected").all()
    avg = pd.read_csv(workflow_dir / "results/summary/metrics_avg.csv").sort_values("model")
    assert avg[["model", "n_seeds", "n_planned"]].values.tolist() == [["cnn", 2, 2], ["mlp", 1, 2]]
    assert (workflow_dir / "results/summary/evaluate.json").exists()
    assert f"{SWEEP_FAILING}/run.json" in (workflow_dir / "results/summary/failed_runs.txt").read_text()
    overview = (workflow_dir / "results/summary/overview.rst").read_text()
    assert "1 of 4" in overview and "InjectedFailure" in overview and "data audit" in overview

    # fixed (the injection is gone): the documented command retrains the failed run and nothing else
    healthy = (workflow_dir / SWEEP_HEALTHY / "checkpoint_best.pt").read_bytes()
    healthy_mtime = (workflow_dir / SWEEP_HEALTHY / "checkpoint_best.pt").stat().st_mtime_ns
    config = "--configfile config/test.yaml"
    plan = run_shell(
        workflow_dir, f"snakemake {OVERVIEW} -n {config} --forcerun $(cat results/summary/failed_runs.txt)"
    )
    (trained,) = re.findall(r"^rule train:\n(?:    input: .*\n)?    output: (.*)$", plan.stdout, re.M)
    assert trained.startswith(f"{SWEEP_FAILING}/history.json")
    again = run_shell(
        workflow_dir,
        f"snakemake {OVERVIEW} --cores 2 {config} --forcerun $(cat results/summary/failed_runs.txt)",
    )
    assert "FAILED" not in again.stdout and "pcamflow: the sweep is done." in again.stdout
    assert (workflow_dir / SWEEP_HEALTHY / "checkpoint_best.pt").read_bytes() == healthy
    assert (workflow_dir / SWEEP_HEALTHY / "checkpoint_best.pt").stat().st_mtime_ns == healthy_mtime
    runs = pd.read_csv(workflow_dir / "results/summary/runs.csv")
    assert runs["status"].tolist() == ["done"] * 4
    assert (workflow_dir / "results/summary/failed_runs.txt").read_text() == ""
    assert (
        snakemake(workflow_dir, OVERVIEW, "-n", "--configfile", "config/test.yaml").stdout.count("rule train")
        == 0
    )


@pytest.mark.slow
def test_a_run_whose_training_is_killed_by_sigkill_on_every_attempt_is_recorded_and_the_rest_summarised(
    workflow_dir,
):
    (workflow_dir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # the training process of lr 0.01 is SIGKILLed on both attempts, as the OOM killer does
    out = run_shell(
        workflow_dir,
        f"snakemake {OVERVIEW} --cores 2 --retries 1 --configfile tiny.yaml",
        **{INJECT_SIGNAL_ENV: f"*{FAILING}"},
    )
    print(out.stdout)  # for the record (pytest -s): what the user sees at the end
    reason = "killed by signal SIGKILL (out of memory? check the job's memory request, resources.mem_mb / sacct MaxRSS)"
    assert f"{FAILING}: {reason} (2 attempts)" in out.stdout
    assert "champion   model~mlp/lr~0.001/batch_size~32/optimizer~adam" in out.stdout
    runs = pd.read_csv(workflow_dir / "results/summary/runs.csv")
    failed = runs.loc[runs["status"] == "failed"]
    print(failed.to_csv(index=False))
    assert failed["run_dir"].tolist() == [FAILING] and failed["attempts"].tolist() == [2]
    assert failed["failure_reason"].tolist() == [reason]
    avg = pd.read_csv(workflow_dir / "results/summary/metrics_avg.csv")
    assert avg[["lr", "n_seeds", "n_planned"]].values.tolist() == [[0.001, 1, 1], [0.01, 0, 1]]
    log = (workflow_dir / "results/logs/train" / f"{FAILING.removeprefix('results/runs/')}.log").read_text()
    assert f"attempt 2 of 2: training {reason}; recording the run as failed" in log
