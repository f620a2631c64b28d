"""The trainer: reproducible twin runs, resume after SIGKILL and SIGTERM, outputs, clear config errors."""

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, pcamflow
from train_fixtures import write_store

from pcamflow import rundir
from pcamflow.errors import EXIT_PREEMPTED, PcamflowError, Preempted
from pcamflow.rundir import TIMING_FIELDS
from pcamflow.training import loop, runconfig
from pcamflow.training.checkpoint import load_checkpoint, load_model
from pcamflow.training.step import build_optimizer, global_grad_norm, lr_factor
from pcamflow.training.train import run_training

STEPS_PER_EPOCH = 6  # 120 tiles / batch 20


pytestmark = pytest.mark.usefixtures("restore_torch_globals")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 120, "valid": 40})


def run_config(store, **training):
    settings = {
        "epochs": 3,
        "cnn_width": 4,
        "threads": 1,
        "log_every": 2,
        "grad_norm_every": 3,
        "device": "cpu",
    }
    return {
        "data": str(store),
        "model": "cnn",
        "lr": 0.003,
        "batch_size": 20,
        "optimizer": "adam",
        "seed": 7,
        "training": {**settings, **training},
    }


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """One uninterrupted run that twin and resumed runs are compared with."""
    out = tmp_path_factory.mktemp("reference")
    torch_threads = torch.get_num_threads()
    run_training(run_config(store), out)
    torch.set_num_threads(torch_threads)
    return out


def without_timing(history: dict) -> dict:
    epochs = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history["epochs"]]
    return {**history, "epochs": epochs}


def assert_same_run(a, b):
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a, b))
    assert without_timing(ha) == without_timing(hb)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        wa, wb = (load_checkpoint(d / name)["model"] for d in (a, b))
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs"


def test_a_run_writes_history_metrics_checkpoints_provenance_and_tensorboard(reference, store):
    history = json.loads((reference / "history.json").read_text())
    assert history["selection_metric"] == "val_auc"
    assert [row["epoch"] for row in history["epochs"]] == [1, 2, 3]
    assert set(history["epochs"][0]) == set(rundir.EPOCH_FIELDS)
    best = max(history["epochs"], key=lambda row: row["val_auc"])
    assert history["best_epoch"] == best["epoch"]
    assert history["epochs"][-1]["val_auc"] > 0.9  # the centre signal is learnt
    steps = history["steps"]
    assert [s["step"] for s in steps] == [s for s in range(1, 19) if s % 2 == 0 or s % 3 == 0]
    assert all((s["grad_norm"] is not None) == (s["step"] % 3 == 0) for s in steps)
    assert all(s["grad_norm"] > 0 for s in steps if s["grad_norm"] is not None)

    frame = pd.read_csv(reference / "metrics.csv")
    assert list(frame.columns) == list(rundir.EPOCH_FIELDS) and len(frame) == 3
    assert frame["val_auc"].tolist() == pytest.approx([row["val_auc"] for row in history["epochs"]])

    run = json.loads((reference / "run.json").read_text())
    assert run["seed"] == 7 and run["run_config"]["training"]["epochs"] == 3
    assert run["run_config"]["training"]["scheduler"] == "cosine"  # defaults filled in
    for key in ("git", "versions", "hostname", "device", "device_name", "slurm_job_id", "data_checksum"):
        assert key in run
    assert run["versions"]["torch"] == torch.__version__ and run["resumed_from"] is None
    assert run["end_time"] >= run["start_time"]

    model, config = load_model(reference / "checkpoint_best.pt")
    assert config["model"] == "cnn" and not model.training
    assert load_checkpoint(reference / "checkpoint_best.pt")["epoch"] == history["best_epoch"]
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())
    assert not (reference / "state").exists()  # resume state is removed once the outputs exist


def test_twin_runs_are_bit_identical(reference, store, tmp_path):
    run_training(run_config(store), tmp_path)
    assert_same_run(reference, tmp_path)


def test_a_device_resident_run_gives_the_host_runs_history_bit_for_bit(reference, store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pcamflow.training.device")
    run_training(run_config(store, device_resident=True), tmp_path)  # the CUDA input path, on the cpu
    assert "input: device-resident (device_resident True)" in caplog.text
    assert_same_run(reference, tmp_path)  # history.json (timing aside) and both checkpoints' weights


def test_a_run_checkpointed_device_resident_resumes_with_host_gathers(reference, store, tmp_path):
    state = tmp_path / "state"
    with pytest.raises(Preempted):
        run_training_with_signal_at_first_step(run_config(store, device_resident=True), tmp_path / "a", state)
    run_training(run_config(store, device_resident=False), tmp_path / "b", state)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed_from"] == {"epoch": 1, "step": 1}
    assert_same_run(reference, tmp_path / "b")


def start_cli_run(config: dict, tmp_path, *extra: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "pcamflow.cli",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "out"),
    ]
    cmd += ["--state-dir", str(tmp_path / "state"), *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_line(proc, needle: str) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return lines
    proc.wait()
    pytest.fail(f"the run ended ({proc.returncode}) before logging {needle!r}:\n{''.join(lines)}")


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_result(reference, store, tmp_path):
    config = run_config(store, checkpoint_every_steps=4)
    proc = start_cli_run(config, tmp_path)
    wait_for_line(proc, "checkpoint (every 4 steps): 1 epochs done, step 8")  # inside epoch 2
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "history.json").exists()
    state = load_checkpoint(tmp_path / "state" / "checkpoint_last.pt")
    assert 8 <= state["step"] < 3 * STEPS_PER_EPOCH and state["step"] % STEPS_PER_EPOCH  # mid-epoch

    resumed_from = state["step"]
    run_training(config, tmp_path / "out", tmp_path / "state")
    assert_same_run(reference, tmp_path / "out")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["resumed_from"] == {"epoch": resumed_from // STEPS_PER_EPOCH + 1, "step": resumed_from}


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["SIGTERM", "SIGUSR1", "SIGINT (Ctrl-C)"]
)
def test_a_slurm_warning_signal_checkpoints_and_exits_for_a_retry(reference, store, tmp_path, sig):
    config = run_config(store)
    proc = start_cli_run(config, tmp_path)
    wait_for_line(proc, "step 4/6")
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == EXIT_PREEMPTED, rest
    assert f"{sig.name} received" in rest
    state = load_checkpoint(tmp_path / "state" / "checkpoint_last.pt")
    assert state["step"] < 3 * STEPS_PER_EPOCH
    assert not (tmp_path / "out" / "history.json").exists()
    run_training(config, tmp_path / "out", tmp_path / "state")  # what Snakemake's retry does
    assert_same_run(reference, tmp_path / "out")


def test_a_checkpoint_of_another_config_is_not_resumed(store, tmp_path, caplog):
    state = tmp_path / "state"
    first = run_config(store, epochs=1)
    with pytest.raises(Preempted):
        # stop right after the first step: a SIGTERM sent to ourselves
        run_training_with_signal_at_first_step(first, tmp_path / "a", state)
    assert (state / "checkpoint_last.pt").exists()
    caplog.set_level(logging.INFO, logger="pcamflow.training")
    run_training(run_config(store, epochs=1, dropout=0.1), tmp_path / "b", state)
    assert "not resuming" in caplog.text and "run config changed" in caplog.text
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed_from"] is None


def run_training_with_signal_at_first_step(config, out, state, sig=signal.SIGTERM):
    original = loop.train_step

    def step_then_signal(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), sig)
        return result

    loop.train_step = step_then_signal
    try:
        run_training(config, out, state)
    finally:
        loop.train_step = original


@pytest.mark.parametrize(
    "training",
    [
        {"amp": "bf16", "channels_last": True},
        {
            "sampler": "balanced",
            "grad_clip": 0.5,
            "color_jitter": 0.2,
            "scheduler": "step",
            "warmup_epochs": 0.5,
        },
    ],
    ids=["bf16-channels-last", "balanced-clip-jitter-step"],
)
def test_training_switches_run_and_learn(store, tmp_path, training):
    config = {**run_config(store, epochs=1, **training), "model": "mlp", "optimizer": "sgd"}
    config["training"]["mlp_hidden"] = [8]
    summary = run_training(config, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert summary["best_epoch"] == 1
    assert math.isfinite(history["epochs"][0]["train_loss"])
    if training.get("grad_clip"):
        assert any(s["grad_norm"] is not None for s in history["steps"])


def test_non_terminal_logs_show_throughput_and_data_time(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pcamflow.training")
    run_training({**run_config(store, epochs=1), "model": "mlp"}, tmp_path)
    step_lines = [r.getMessage() for r in caplog.records if "img/s, data" in r.getMessage()]
    assert len(step_lines) == STEPS_PER_EPOCH // 2  # log_every = 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "vgg"}, "key 'model': 'vgg' is not one of"),
        ({"lr": -0.1}, "key 'lr'"),
        ({"optimizer": "rmsprop"}, "key 'optimizer'"),
        ({"data": "/nonexistent/store"}, "key 'data': /nonexistent/store/train_x.npy missing"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"training": {"epochs": 0}}, "key 'training.epochs'"),
        ({"training": {"amp": "fp16", "device": "cpu"}}, "training.amp: fp16 needs a CUDA device"),
    ],
)
def test_a_wrong_run_config_fails_with_one_clear_line(store, tmp_path, change, message):
    config = {**run_config(store), **change}
    with pytest.raises(PcamflowError) as err:
        run_training(config, tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "history.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(store, tmp_path):
    with pytest.raises(PcamflowError, match="training.device: cuda requested but no CUDA device"):
        run_training(run_config(store, device="cuda"), tmp_path)


def test_the_command_exits_2_with_one_line_on_a_bad_config(store, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**run_config(store), "model": "vgg"}))
    proc = pcamflow("train", "--config", str(cfg), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"pcamflow: error: run config: key 'model': 'vgg' is not one of {runconfig.run_config_schema()['properties']['model']['enum']}"
    ]


def test_the_command_refuses_to_train_over_a_finished_run_unless_told_to(reference, store, tmp_path):
    out = tmp_path / "by_hand"
    shutil.copytree(reference, out)
    finished = {name: (out / name).read_bytes() for name in rundir.RUN_FILES}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(store, epochs=1)))
    proc = pcamflow("train", "--config", str(cfg), "--out", str(out), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"pcamflow: error: {out}: already holds history.json, metrics.csv ... (5 files of a finished run); "
        "refusing to overwrite them (pcamflow train --overwrite replaces them)"
    ]
    assert {name: (out / name).read_bytes() for name in rundir.RUN_FILES} == finished
    pcamflow("train", "--config", str(cfg), "--out", str(out), "--overwrite")
    assert len(json.loads((out / rundir.HISTORY).read_text())["epochs"]) == 1


def test_learning_rate_schedules():
    common = {"total_steps": 100, "steps_per_epoch": 10, "step_size": 2, "gamma": 0.1}
    warm = [lr_factor(s, schedule="none", warmup_steps=4, **common) for s in range(6)]
    assert warm == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, schedule="cosine", warmup_steps=0, **common) for s in (0, 50, 99)]
    assert cosine[0] == 1.0 and cosine[1] == pytest.approx(0.5) and 0 < cosine[2] < 0.001
    step = [lr_factor(s, schedule="step", warmup_steps=0, **common) for s in (0, 19, 20, 40)]
    assert step == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_optimizers_and_global_grad_norm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    settings = {"weight_decay": 0.01, "momentum": 0.9, "nesterov": True}
    sgd = build_optimizer(model, "sgd", 0.1, settings)
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer(model, "adamw", 0.1, settings), torch.optim.AdamW)
    model(torch.randn(5, 4)).sum().backward()
    expected = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    torch.testing.assert_close(global_grad_norm(model.parameters()), expected)


def test_ctrl_c_checkpoints_like_sigterm(store, tmp_path):
    """SIGINT (Ctrl-C in a terminal or of a local workflow) checkpoints and stops like SIGTERM."""
    with pytest.raises(Preempted, match="SIGINT: checkpointed at step 1"):
        run_training_with_signal_at_first_step(
            run_config(store, epochs=1), tmp_path / "a", tmp_path / "state", signal.SIGINT
        )
    assert load_checkpoint(tmp_path / "state" / "checkpoint_last.pt")["step"] == 1


def test_a_corrupt_resume_checkpoint_names_the_file_to_remove(store, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint_last.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(PcamflowError) as err:
        run_training(run_config(store, epochs=1), tmp_path / "out", state)
    message = str(err.value)
    assert f"delete {state / 'checkpoint_last.pt'} to restart this run" in message and "\n" not in message


# ---------------------------------------------------------------- live TensorBoard and divergence


def live_scalars(live_dir) -> dict[str, list[int]]:
    """tag -> the steps of its events, as TensorBoard shows them (orphans of a resumed run purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(live_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [event.step for event in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_live_events_are_readable_while_the_run_trains(store, tmp_path, monkeypatch):
    seen = {}
    original = loop.save_resume_state

    def checkpoint_and_look(run, progress, why):
        original(run, progress, why)
        if why == "epoch end" and progress.epoch == 1:  # epoch 1 of 3 done, the run still going
            seen.update(live_scalars(tmp_path / "live"))

    monkeypatch.setattr(loop, "save_resume_state", checkpoint_and_look)
    run_training(run_config(store), tmp_path / "out", live_dir=tmp_path / "live")
    epoch_one = [s for s in range(1, STEPS_PER_EPOCH + 1) if s % 2 == 0 or s % 3 == 0]
    assert seen["step/train_loss_step"] == epoch_one
    assert seen["step/grad_norm"] == [3, 6]
    assert seen["epoch/val_auc"] == [STEPS_PER_EPOCH]  # epoch metrics at the epoch's last step
    final = live_scalars(tmp_path / "live")
    assert final["epoch/val_auc"] == [6, 12, 18] and final["epoch/epoch"] == [6, 12, 18]
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert final["step/train_loss_step"] == [s["step"] for s in history["steps"]]


@pytest.mark.slow
def test_a_killed_and_resumed_run_shows_every_step_once_in_its_live_events(store, tmp_path):
    config = run_config(store, checkpoint_every_steps=4)
    live = tmp_path / "live"
    proc = start_cli_run(config, tmp_path, "--live-dir", str(live))
    # step 10 is logged (and flushed) after the checkpoint at step 8: the killed run leaves it behind
    wait_for_line(proc, "(global 10)")
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert 10 in live_scalars(live)["step/train_loss_step"]
    assert load_checkpoint(tmp_path / "state" / "checkpoint_last.pt")["step"] == 8

    run_training(config, tmp_path / "out", tmp_path / "state", live_dir=live)
    scalars = live_scalars(live)
    logged = [s for s in range(1, 3 * STEPS_PER_EPOCH + 1) if s % 2 == 0 or s % 3 == 0]
    assert scalars["step/train_loss_step"] == logged  # each step once: none repeated, none lost
    assert scalars["step/grad_norm"] == list(range(3, 19, 3))
    assert scalars["epoch/val_auc"] == [6, 12, 18]


def test_a_diverging_run_stops_with_the_step_and_the_reason(store, tmp_path):
    config = {**run_config(store, epochs=1, log_every=1, warmup_epochs=0), "lr": 1e30}
    with pytest.raises(loop.TrainingDiverged, match=r"training loss is (nan|inf) at step \d+ \(epoch 1\)"):
        run_training(config, tmp_path / "out")
    assert not (tmp_path / "out" / "history.json").exists()
