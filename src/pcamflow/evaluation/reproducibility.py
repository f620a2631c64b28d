"""Reproducibility check: train one run a second time with the same config and seed, and compare.

Two runs agree when every recorded number of their histories (timing fields aside: wall-clock
speed differs between any two runs) and every weight of their last checkpoints is equal. The
result states the largest absolute difference per history field and over the weights, so a
mismatch is measured, not just flagged.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pcamflow.errors import PcamflowError
from pcamflow.evaluation.aggregate import load_history
from pcamflow.rundir import HISTORY, LAST_CHECKPOINT, RUN_INFO, TIMING_FIELDS

COMPARED_CHECKPOINT = LAST_CHECKPOINT


def history_differences(a: dict, b: dict) -> dict[str, float | None]:
    """Largest absolute difference per numeric field of the epoch and step records (epochs.<f>, steps.<f>).

    A field present in only one history, or records of different lengths, count as an infinite
    difference; a value that is null in both counts as equal.
    """
    out: dict[str, float | None] = {}
    for part in ("epochs", "steps"):
        ra, rb = a.get(part, []), b.get(part, [])
        fields = sorted({k for r in ra + rb for k in r} - set(TIMING_FIELDS))
        for name in fields:
            out[f"{part}.{name}"] = _largest_difference([r.get(name) for r in ra], [r.get(name) for r in rb])
    out["best_epoch"] = 0.0 if a.get("best_epoch") == b.get("best_epoch") else math.inf
    return out


def weight_differences(state_a: dict, state_b: dict) -> dict:
    """Largest absolute difference over all tensors, and how many tensors differ at all."""
    keys_a, keys_b = set(state_a), set(state_b)
    if keys_a != keys_b:
        return {
            "max_abs_diff": math.inf,
            "tensors": len(keys_a | keys_b),
            "tensors_differing": len(keys_a ^ keys_b),
        }
    largest, differing = 0.0, 0
    for key in sorted(keys_a):
        ta, tb = _array(state_a[key]), _array(state_b[key])
        if ta.shape != tb.shape:
            largest, differing = math.inf, differing + 1
            continue
        diff = float(np.max(np.abs(ta.astype(np.float64) - tb.astype(np.float64)))) if ta.size else 0.0
        if diff > 0 or not np.array_equal(ta, tb):
            differing += 1
        largest = max(largest, diff)
    return {"max_abs_diff": largest, "tensors": len(keys_a), "tensors_differing": differing}


def compare_runs(original: str | os.PathLike, twin: str | os.PathLike) -> dict:
    """reproducibility.json content for two run directories trained from the same config and seed."""
    from pcamflow.training.checkpoint import load_checkpoint

    hist_a, hist_b = load_history(original), load_history(twin)
    history = history_differences(hist_a, hist_b)
    # the saved state dicts themselves: no model (nor pretrained weights) needs building to compare
    weights = weight_differences(
        load_checkpoint(Path(original) / COMPARED_CHECKPOINT)["model"],
        load_checkpoint(Path(twin) / COMPARED_CHECKPOINT)["model"],
    )
    identical = all(v == 0 for v in history.values() if v is not None) and weights["max_abs_diff"] == 0
    final = {
        name: [hist_a["epochs"][-1].get(name), hist_b["epochs"][-1].get(name)]
        for name in ("train_loss", "val_loss", "val_auc", "val_accuracy")
    }
    return {
        "identical": bool(identical),
        "original": str(original),
        "twin": str(twin),
        "compared": f"{HISTORY} (timing fields {', '.join(sorted(TIMING_FIELDS))} left out) "
        f"and {COMPARED_CHECKPOINT}",
        "final_epoch": final,
        "largest_difference": {"history": history, "weights": weights},
    }


def difference_rows(result: dict) -> list[dict]:
    """Rows for the report table: each compared quantity with its largest absolute difference."""
    rows = [
        {"compared": k, "largest abs difference": v}
        for k, v in result["largest_difference"]["history"].items()
    ]
    w = result["largest_difference"]["weights"]
    rows.append(
        {
            "compared": f"weights ({w['tensors_differing']} of {w['tensors']} tensors differ)",
            "largest abs difference": w["max_abs_diff"],
        }
    )
    return rows


def _largest_difference(xs: list, ys: list) -> float | None:
    if len(xs) != len(ys):
        return math.inf
    largest = None
    for x, y in zip(xs, ys):
        if x is None and y is None:
            continue
        if x is None or y is None:
            return math.inf
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            d = 0.0 if x == y or both_nan else abs(float(x) - float(y))  # equal infinities are equal
            largest = d if largest is None else max(largest, d)
        elif x != y:
            return math.inf
    return largest


def _array(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):  # a torch tensor; bf16 has no numpy dtype, float64 holds it exactly
        tensor = tensor.detach().cpu()
        return tensor.double().numpy() if tensor.is_floating_point() else tensor.numpy()
    return np.asarray(tensor)


def write_reproducibility(champion_json, out_json, out_html, twin_dir, state_dir, run_dir: str = "") -> dict:
    """Train a run again from its own run.json config and seed, compare the twins, and write
    reproducibility.json and its HTML table. The run is run_dir, or (when empty) the deployed
    champion run named in champion_json."""
    from pcamflow.io import read_json, write_json
    from pcamflow.plots import html_table
    from pcamflow.training.train import run_training

    original = Path(run_dir or read_json(champion_json)["deploy"]["run_dir"])
    info_path = original / RUN_INFO
    if not info_path.exists():
        raise PcamflowError(f"{info_path}: run record missing (train this run first)")
    run_config = read_json(info_path)["run_config"]
    run_training(run_config, twin_dir, state_dir)
    point = {k: v for k, v in run_config.items() if k not in ("data", "seed", "training")}
    result = {"grid_point": point, "seed": run_config["seed"], **compare_runs(original, twin_dir)}
    write_json(out_json, result)
    verdict = "identical" if result["identical"] else "NOT identical"
    losses = result["final_epoch"]["val_loss"]
    html_table(
        pd.DataFrame(difference_rows(result)),
        f"Twin runs of {original}: {verdict}",
        out_html,
        notes=[
            f"Final validation loss: {losses[0]} (original) and {losses[1]} (twin).",
            f"Compared: {result['compared']}.",
        ],
    )
    return result
