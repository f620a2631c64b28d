"""`pcamflow status` on a half-finished sweep: done, failed (with reason), running, pending, read-only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, TEST_SWEEP_FAILING_RUN, copy_workflow, pcamflow
from test_train_workflow import training_script_pid

from pcamflow.evaluation.status import slurm_comment
from pcamflow.layout import results_root, run_dir, train_log
from pcamflow.training.attempt import INJECT_ENV

# Two grid points x two seeds: the views of another experiment and of a bad override.
SWEEP = {
    "synthetic": {"n_train": 200, "n_valid": 100, "n_test": 100},
    "seeds": [1, 2],
    "grid": {"model": ["mlp", "cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]},
    "training": {"epochs": 1, "mlp_hidden": [8], "cnn_width": 8},
}
# the shared sweep's run that failed on both of its attempts (conftest.finished_test_sweep)
FAILURE = f"InjectedFailure: failure injected by {INJECT_ENV} for {TEST_SWEEP_FAILING_RUN}"
GROWN = ("--configfile", "config/test.yaml", "--config", "seeds=[1,2,3]")


def point(model: str) -> dict:
    return {"model": model, "lr": 0.001, "batch_size": 32, "optimizer": "adam"}


def status(workdir, *args, config: str = "sweep.yaml") -> str:
    out = pcamflow("status", "--config", config, *args, cwd=workdir).stdout
    print(out)  # for the record (pytest -s)
    return out


def run_line(out: str, model: str, seed: int) -> str:
    """The line of one run under its grid point's header."""
    header = f"model~{model}/lr~0.001/batch_size~32/optimizer~adam"
    block = out.split(f"\n{header}  ", 1)[1].split("\n\n", 1)[0]  # not the header in a note's path
    return re.search(rf"^  seed {seed} .*$", block, re.M)[0]


@pytest.mark.slow
def test_status_of_a_half_finished_sweep_beside_a_running_controller(finished_test_sweep, tmp_path):
    # the shared sweep (conftest) grown by a third seed: per grid point seeds 1 and 2 are done, but
    # for mlp seed 2, which failed on its last attempt; the third seeds are not trained yet
    workflow_dir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    root = workflow_dir / results_root("default")
    mlp_1 = run_dir(results_root("default"), point("mlp"), 1)

    # a controller trains mlp seed 3; its training job is held still while status looks
    mlp_3 = run_dir(results_root("default"), point("mlp"), 3)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *GROWN, "--", f"{mlp_3}/history.json"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    controller = subprocess.Popen(
        cmd, cwd=workflow_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while (pid := training_script_pid(controller.pid)) is None and controller.poll() is None:
        assert time.monotonic() < deadline, "the training job did not start"
        time.sleep(0.2)
    assert pid is not None, controller.communicate()[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        locks = sorted(p.name for p in (workflow_dir / ".snakemake/locks").iterdir())
        out = status(workflow_dir, "--set", "seeds=[1,2,3]", config="config/test.yaml")
        assert sorted(p.name for p in (workflow_dir / ".snakemake/locks").iterdir()) == locks
    finally:
        os.kill(pid, signal.SIGCONT)
    assert controller.wait(timeout=600) == 0, controller.communicate()[0]  # status did not disturb it

    assert "experiment 'default'" in out and "6 runs: 3 done, 1 running, 1 failed, 1 pending" in out
    done = history_metric(root / "runs" / mlp_1.relative_to(results_root("default") / "runs"))
    assert re.fullmatch(rf"  seed 1 +done +val_auc {done:.4f} \(epoch \d\)", run_line(out, "mlp", 1))
    assert re.search(rf"1/3 done  best val_auc {done:.4f} \(seed 1\), mean {done:.4f}", out)
    assert run_line(out, "mlp", 2).split(None, 3)[2:] == ["failed", f"{FAILURE} (after 2 attempts)"]
    assert re.fullmatch(r"  seed 3 +running +log: .*seed~3\.log", run_line(out, "mlp", 3))
    assert re.fullmatch(r"  seed 3 +pending", run_line(out, "cnn", 3))

    # later, with no controller: the finished run is done; a started one (its log) is interrupted
    log = workflow_dir / train_log(results_root("default"), point("cnn"), 3)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    out = status(workflow_dir, "--set", "seeds=[1,2,3]", config="config/test.yaml")
    assert "6 runs: 4 done, 1 failed, 1 interrupted" in out
    assert " done " in run_line(out, "mlp", 3) and " interrupted " in run_line(out, "cnn", 3)


def history_metric(run: os.PathLike, metric: str = "val_auc") -> float:
    history = json.loads((run / "history.json").read_text())
    return history["epochs"][history["best_epoch"] - 1][metric]


def test_status_of_another_experiment_and_of_a_bad_override(workflow_dir):
    (workflow_dir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    out = status(workflow_dir, "--set", "experiment=trial", "--set", "seeds=[5]")
    assert "experiment 'trial'" in out and "results in results/trial/" in out
    assert "2 runs: 2 pending" in out and "seed 5" in out
    proc = pcamflow("status", "--config", "sweep.yaml", "--set", "seeds=[x]", cwd=workflow_dir, check=False)
    assert proc.returncode == 2
    # blamed on the --set value that gave it (issue 21 item 6), not on the config file under it
    assert (
        proc.stderr.strip() == "pcamflow: error: --set seeds=[x]: key 'seeds.0': 'x' is not of type 'integer'"
    )


def test_slurm_comment_is_the_plugins_rule_and_wildcard_values():
    assert slurm_comment(point("cnn"), 42) == "rule_train_wildcards_cnn_0.001_32_adam_42"
