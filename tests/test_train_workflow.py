"""The train rule through Snakemake: one run's outputs, and a SIGTERM'd job resumed by a retry."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pcamflow.rundir import RUN_FILES

RUN = "model~cnn/lr~0.001/batch_size~32/optimizer~adam/seed~1"


def descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc), so the test signals only what it started."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def training_script_pid(snakemake_pid: int) -> int | None:
    for pid in descendants(snakemake_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if ".snakemake/scripts" in cmdline and "train.py" in cmdline:
            return pid
    return None


@pytest.mark.slow
def test_train_rule_writes_a_run_and_a_retry_resumes_a_preempted_job(workflow_dir):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["training"]["checkpoint_every_steps"] = 4  # a mid-epoch checkpoint soon after the start
    (workflow_dir / "train_test.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False)
    )  # grid order = path
    target = f"results/runs/{RUN}/history.json"
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workflow_dir), "--cores", "2"]
    cmd += ["--configfile", "train_test.yaml", "--retries", "1", target]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        cmd, cwd=workflow_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    # wait for the first resume checkpoint of the training job, then send what Slurm sends
    state = workflow_dir / "results" / "state" / RUN / "checkpoint_last.pt"
    deadline = time.monotonic() + 900
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = training_script_pid(proc.pid)
    if pid is None:
        proc.kill()
        pytest.fail(f"training job not found; snakemake said:\n{proc.communicate()[0]}")
    os.kill(pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output

    run_dir = workflow_dir / "results" / "runs" / RUN
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tensorboard").iterdir())
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["resumed_from"] is not None, "the retry did not resume from the checkpoint"
    assert run["run_config"]["model"] == "cnn" and run["seed"] == 1
    assert run["run_config"]["training"]["cnn_width"] == 8  # config["training"] reached the run
    log = (workflow_dir / "results" / "logs" / "train" / f"{RUN}.log").read_text()
    assert "resuming from" in log  # the retry's log (Snakemake replaced the first attempt's)
    assert not state.exists()  # cleared once the outputs are complete
    assert (workflow_dir / "results" / "benchmarks" / "train" / f"{RUN}.tsv").exists()
    # the live TensorBoard scalars of both attempts: every logged step once, none lost
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    live = EventAccumulator(str(workflow_dir / "results" / "tensorboard" / RUN), size_guidance={"scalars": 0})
    live.Reload()
    assert [e.step for e in live.Scalars("step/train_loss_step")] == [s["step"] for s in history["steps"]]
    assert len(live.Scalars("epoch/val_auc")) == 2
    assert run["run_config"]["training"]["device_resident"] == "auto"  # read from the config

    # where batches are gathered does not change a run: switching the input path retrains nothing
    config["training"]["device_resident"] = True
    (workflow_dir / "resident.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dry = cmd[:-3] + ["--configfile", "resident.yaml", "--dry-run", target]
    planned = subprocess.run(dry, cwd=workflow_dir, env=env, capture_output=True, text=True, check=True)
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout


def test_a_preempted_rule_script_exits_75_with_one_line(tmp_path, capsys):
    """Every rule script that trains (train, reproducibility) goes through run_script: exit 75, one line."""
    from types import SimpleNamespace

    from pcamflow.errors import EXIT_PREEMPTED, Preempted
    from pcamflow.smk import run_script

    def preempted_main(smk):
        raise Preempted("SIGTERM: checkpointed mid-epoch; run again to resume")

    log = tmp_path / "rule.log"
    with pytest.raises(SystemExit) as stop:
        run_script(SimpleNamespace(log=[str(log)]), preempted_main)
    assert stop.value.code == EXIT_PREEMPTED
    assert log.read_text() == "pcamflow: SIGTERM: checkpointed mid-epoch; run again to resume\n"
    assert "Traceback" not in capsys.readouterr().err
