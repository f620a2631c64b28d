"""Where the deployed champion fails on test: per-slice metrics and galleries of its surest errors.

Slices: every tile; mean intensity of the un-normalised tile (dark / middle / bright, thresholds
from config); the scanning centre where the split's meta CSV has a `centre` column; and the data
audit's flags (NaN, inf, out-of-range values, black, white, duplicates within the split or across
splits, and tiles without any flag). A metric that is undefined on a slice (e.g. recall with no
positives) is left empty and its reason goes in the `undefined` column; it is never reported as 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pcamflow import metrics
from pcamflow.config import slice_thresholds_problem
from pcamflow.constants import FAULTS
from pcamflow.errors import PcamflowError

SLICE_METRICS = ("accuracy", "recall", "precision", "f2", "roc_auc")
CENTRE_COLUMN = "centre"
BLOCK = 4096  # tiles per block when averaging intensities of a memory-mapped split


def mean_intensity(x: np.ndarray) -> np.ndarray:
    """Mean of every pixel and channel of each uint8 tile, as a fraction of full scale (0..1)."""
    out = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), BLOCK):  # blocks: x may be memory-mapped and large
        block = np.asarray(x[start : start + BLOCK])
        out[start : start + len(block)] = block.reshape(len(block), -1).mean(axis=1) / 255.0
    return out


def intensity_slices(intensity: np.ndarray, dark: float, bright: float) -> dict[str, np.ndarray]:
    problem = slice_thresholds_problem(dark, bright)
    if problem:
        raise PcamflowError(problem)
    return {
        f"dark (< {dark:g})": intensity < dark,
        f"middle ({dark:g} to {bright:g})": (intensity >= dark) & (intensity <= bright),
        f"bright (> {bright:g})": intensity > bright,
    }


def centre_slices(
    meta: pd.DataFrame | None, raw_index: np.ndarray, meta_name: str = "meta CSV"
) -> dict[str, np.ndarray]:
    """One slice per scanning centre, from the meta CSV row of each tile's raw index ({} without a centre)."""
    if meta is None or CENTRE_COLUMN not in meta.columns:
        return {}
    if len(raw_index) and raw_index.max() >= len(meta):
        raise PcamflowError(
            f"{meta_name}: holds {len(meta)} rows but the split has raw index {raw_index.max()}"
        )
    centre = meta[CENTRE_COLUMN].to_numpy()[raw_index]
    return {f"centre {value}": centre == value for value in sorted(pd.unique(centre))}


def audit_flag_indices(audit: Mapping, cross: Mapping | None, split: str) -> dict[str, set[int]]:
    """Raw row indices per audit flag of one split (the audit JSON's faults and duplicates)."""
    faults = audit.get("faults", {})
    flags = {flag: set(faults.get(flag, {}).get("indices", [])) for flag in FAULTS}
    flags["duplicate within split"] = {
        i for group in audit.get("duplicates", {}).get("groups", []) for i in group
    }
    across = set()
    for pair in (cross or {}).get("pairs", []):
        for side in ("a", "b"):
            if pair[f"split_{side}"] == split:
                across.add(pair[f"index_{side}"])
    flags["duplicate across splits"] = across
    return flags


def audit_slices(flags: Mapping[str, set[int]], raw_index: np.ndarray) -> dict[str, np.ndarray]:
    """A slice per flag that some tile of the store carries, and 'no audit flag'."""
    out, any_flag = {}, np.zeros(len(raw_index), dtype=bool)
    for flag, indices in flags.items():
        mask = np.isin(raw_index, np.fromiter(indices, dtype=np.int64, count=len(indices)))
        any_flag |= mask
        if mask.any():
            out[flag] = mask
    out["no audit flag"] = ~any_flag
    return out


def slice_metrics(y: np.ndarray, prob: np.ndarray, threshold: float, mask: np.ndarray) -> dict:
    """n, positives, negatives and SLICE_METRICS of one slice; undefined metrics None with reasons."""
    ys, ps = y[mask].astype(bool), prob[mask]
    pred = ps >= threshold
    values = metrics.binary_metrics(ys, ps, threshold)
    row = {"n": int(ys.size), "positives": int(ys.sum()), "negatives": int((~ys).sum())}
    by_reason: dict[str, list[str]] = {}  # reason -> the metrics it leaves undefined
    for name in SLICE_METRICS:
        row[name] = values[name]
        if values[name] is None:
            by_reason.setdefault(metrics.undefined_reason(ys, name, pred), []).append(name)
    row["undefined"] = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    return row


def slices_table(
    y: np.ndarray, prob: np.ndarray, threshold: float, families: Mapping[str, Mapping[str, np.ndarray]]
) -> pd.DataFrame:
    """One row per slice (family, slice) with counts, metrics and the reasons for undefined metrics."""
    rows = [
        {"family": "all", "slice": "all tiles", **slice_metrics(y, prob, threshold, np.ones(len(y), bool))}
    ]
    for family, masks in families.items():
        for name, mask in masks.items():
            rows.append({"family": family, "slice": name, **slice_metrics(y, prob, threshold, mask)})
    table = pd.DataFrame(rows)
    table[list(SLICE_METRICS)] = table[list(SLICE_METRICS)].astype(float)  # None -> empty cell in the CSV
    return table


def confident_errors(y: np.ndarray, prob: np.ndarray, threshold: float, k: int) -> dict[str, np.ndarray]:
    """Store rows of the k surest false negatives (lowest prob) and false positives (highest prob)."""
    y = y.astype(bool)
    fn = np.flatnonzero(y & (prob < threshold))
    fp = np.flatnonzero(~y & (prob >= threshold))
    return {
        "false_negatives": fn[np.argsort(prob[fn], kind="stable")][:k],
        "false_positives": fp[np.argsort(-prob[fp], kind="stable")][:k],
    }


def gallery_labels(rows: Sequence[int], prob: np.ndarray, raw_index: np.ndarray) -> list[str]:
    """'p=0.013\nraw #1234' per tile: the probability of positive and the tile's row in the raw file."""
    return [f"p={prob[r]:.3f}\nraw #{int(raw_index[r])}" for r in rows]


def read_meta(path: str | os.PathLike | None) -> pd.DataFrame | None:
    if not path:
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise PcamflowError(f"{path}: cannot read the meta CSV ({exc})") from None


def write_slices(
    predictions, evaluate_json, store_dir, audit_json, cross_json, meta_csv, settings, out
) -> pd.DataFrame:
    """slices.csv, its HTML view, the intensity histogram with the slice thresholds and the two error galleries of the deployed champion checkpoint on test.

    `out` maps csv, html, histogram, false_negatives, false_positives to paths; meta_csv may be None.
    """
    from pcamflow.data.store import load_split, verify_store
    from pcamflow.evaluation.evaluate import load_predictions
    from pcamflow.io import read_json, write_csv
    from pcamflow.plots import html_table, plot_gallery, plot_intensity_histogram

    preds, summary = load_predictions(predictions), read_json(evaluate_json)
    deploy = summary["deploy"]
    row = list(preds["seeds"]).index(deploy["seed"])
    prob = preds["test_prob_tta" if "test_prob_tta" in preds else "test_prob"][row]
    threshold = deploy["threshold"]
    verify_store(store_dir, ("test",))  # once per job, before reading a tile
    test = load_split(store_dir, "test")
    y = np.asarray(test.y).astype(bool)
    if not np.array_equal(y, preds["test_y"].astype(bool)):
        raise PcamflowError(
            f"{predictions}: made on another test split than {store_dir} (rerun predict_champion)"
        )
    intensity = mean_intensity(test.x)
    families = {
        "intensity": intensity_slices(intensity, settings["dark"], settings["bright"]),
        "scanning centre": centre_slices(read_meta(meta_csv), test.index, str(meta_csv)),
        "audit flag": audit_slices(
            audit_flag_indices(read_json(audit_json), read_json(cross_json) if cross_json else None, "test"),
            test.index,
        ),
    }
    table = slices_table(y, prob, threshold, {k: v for k, v in families.items() if v})
    write_csv(out["csv"], table)
    html_table(
        table.round(4),
        f"Deployed champion (seed {deploy['seed']}) on test slices, threshold {threshold:.3f}",
        out["html"],
        notes=[
            "Empty cells are metrics that are undefined on the slice; the undefined column says why.",
            f"Threshold chosen on validation for recall >= {summary['target_recall']}.",
        ],
    )
    plot_intensity_histogram(
        intensity,
        y,
        settings["dark"],
        settings["bright"],
        "Test tiles by mean intensity (the slices)",
        out["histogram"],
    )
    errors = confident_errors(y, prob, threshold, settings["gallery"])
    for kind, title in (
        ("false_negatives", "false negatives (tumour missed)"),
        ("false_positives", "false positives"),
    ):
        rows = errors[kind]
        plot_gallery(
            np.asarray(test.x[rows]),
            gallery_labels(rows, prob, test.index),
            f"Most confident {title} of seed {deploy['seed']} at threshold {threshold:.3f} "
            "(true colours; raw = row in the test H5)",
            out[kind],
        )
    return table
