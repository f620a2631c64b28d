"""The reproducibility check: twin runs compared field by field and weight by weight."""

import copy
import json
import math

import pytest
import torch
from train_fixtures import write_store

from pcamflow.evaluation import reproducibility as repro
from pcamflow.training.checkpoint import save_checkpoint
from pcamflow.training.models import build_model

TRAINING = {"mlp_hidden": [4], "dropout": 0.0}


def history(val_loss=0.6, steps=(0.7, 0.69)):
    return {
        "selection_metric": "val_auc",
        "best_epoch": 1,
        "epochs": [
            {
                "epoch": 1,
                "train_loss": 0.7,
                "val_loss": val_loss,
                "val_auc": 0.9,
                "epoch_time_s": 3.0,
                "img_per_s": 9.0,
            }
        ],
        "steps": [
            {"step": i, "train_loss_step": v, "grad_norm": None, "lr": 0.001} for i, v in enumerate(steps)
        ],
    }


def run_dir(root, hist, state):
    root.mkdir(parents=True)
    (root / "history.json").write_text(json.dumps(hist))
    save_checkpoint(
        root / repro.COMPARED_CHECKPOINT,
        {"model": state, "run_config": {"model": "mlp", "training": TRAINING}},
    )
    return root


def test_timing_fields_are_left_out_and_equal_histories_have_zero_differences():
    a, b = history(), history()
    b["epochs"][0]["epoch_time_s"] = 99.0  # wall-clock speed differs between any two runs
    diffs = repro.history_differences(a, b)
    assert "epochs.epoch_time_s" not in diffs and "epochs.img_per_s" not in diffs
    assert set(diffs.values()) <= {0.0, None}
    assert diffs["steps.grad_norm"] is None  # never measured in either run


def test_history_differences_are_the_largest_absolute_difference_per_field():
    diffs = repro.history_differences(history(val_loss=0.63), history(val_loss=0.67, steps=(0.7, 0.5)))
    assert diffs["epochs.val_loss"] == pytest.approx(0.04)
    assert diffs["steps.train_loss_step"] == pytest.approx(0.19)
    assert diffs["epochs.val_auc"] == 0.0
    shorter = history()
    shorter["steps"] = shorter["steps"][:1]
    assert repro.history_differences(history(), shorter)["steps.train_loss_step"] == math.inf


def test_weight_differences():
    torch.manual_seed(0)
    state = build_model("mlp", TRAINING).state_dict()
    same = repro.weight_differences(state, copy.deepcopy(state))
    assert same == {"max_abs_diff": 0.0, "tensors": len(state), "tensors_differing": 0}
    changed = copy.deepcopy(state)
    first = next(iter(changed))
    changed[first] = changed[first] + 1e-3
    diff = repro.weight_differences(state, changed)
    assert diff["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3) and diff["tensors_differing"] == 1
    missing = dict(list(state.items())[1:])
    assert repro.weight_differences(state, missing)["max_abs_diff"] == math.inf


def test_compare_runs_reports_identical_and_different_twins(tmp_path):
    torch.manual_seed(0)
    state = build_model("mlp", TRAINING).state_dict()
    original = run_dir(tmp_path / "a", history(), state)
    twin = run_dir(tmp_path / "b", history(), copy.deepcopy(state))
    result = repro.compare_runs(original, twin)
    assert result["identical"] is True
    drifted = run_dir(tmp_path / "c", history(val_loss=0.67), copy.deepcopy(state))
    result = repro.compare_runs(original, drifted)
    assert result["identical"] is False
    assert result["largest_difference"]["history"]["epochs.val_loss"] == pytest.approx(0.07)
    assert result["final_epoch"]["val_loss"] == [0.6, 0.67]


@pytest.mark.parametrize("chosen_by", ["champion", "config"])
def test_write_reproducibility_trains_the_run_again_and_finds_it_identical(tmp_path, chosen_by):
    from pcamflow.training.runconfig import make_run_config
    from pcamflow.training.train import run_training

    store = write_store(tmp_path / "store", {"train": 64, "valid": 32})
    training = {"epochs": 1, "mlp_hidden": [4], "threads": 1, "log_every": 1, "grad_norm_every": 1}
    point = {"model": "mlp", "lr": 0.01, "batch_size": 16, "optimizer": "adam"}
    original = tmp_path / "runs" / "seed~3"
    run_training(make_run_config(point, 3, training, store), original, tmp_path / "state" / "a")
    deployed = original if chosen_by == "champion" else tmp_path / "elsewhere"
    (tmp_path / "champion.json").write_text(json.dumps({"deploy": {"seed": 3, "run_dir": str(deployed)}}))
    out_json, out_html = tmp_path / "repro.json", tmp_path / "repro.html"
    result = repro.write_reproducibility(
        tmp_path / "champion.json",
        out_json,
        out_html,
        tmp_path / "twin",
        tmp_path / "state" / "twin",
        run_dir="" if chosen_by == "champion" else str(original),
    )
    assert result["identical"] is True
    assert result["grid_point"] == point and result["seed"] == 3
    assert json.loads(out_json.read_text())["largest_difference"]["weights"]["max_abs_diff"] == 0.0
    assert "identical" in out_html.read_text()
    assert (tmp_path / "twin" / "history.json").exists()


def test_a_run_without_its_record_is_a_clear_error(tmp_path):
    from pcamflow.errors import PcamflowError

    (tmp_path / "champion.json").write_text(json.dumps({"deploy": {"run_dir": str(tmp_path / "gone")}}))
    with pytest.raises(PcamflowError, match="run.json: run record missing"):
        repro.write_reproducibility(
            tmp_path / "champion.json",
            tmp_path / "r.json",
            tmp_path / "r.html",
            tmp_path / "t",
            tmp_path / "s",
        )
