"""The champion's single evaluation on test, with baselines, bootstrap intervals and a validation threshold.

Predictions are made once per champion checkpoint (valid and test, `predict_champion`) and saved;
everything else here works on those saved probabilities:

- each seed's threshold is chosen on *validation* as the highest threshold whose validation recall
  reaches `target_recall`, and applied unchanged to test;
- every metric comes from `pcamflow.metrics`, at 0.5 and at that threshold, per seed; the champion's
  row is the mean (and sample std) over its seeds;
- the confidence interval is a percentile bootstrap over test tiles: each resample draws n tiles
  with replacement and is shared by every seed and baseline (so the interval of the mean over seeds
  accounts for the test sample, and the rows are comparable);
- baselines on the same test tiles: the training set's majority class, and always-positive.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pcamflow import metrics
from pcamflow.constants import REFERENCE
from pcamflow.errors import PcamflowError
from pcamflow.io import json_scalar

log = logging.getLogger(__name__)

THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f2")
RANKING_METRICS = ("roc_auc", "pr_auc")
METRICS = (*THRESHOLD_METRICS, *RANKING_METRICS)
AT_HALF = "0.5"
AT_VALIDATION = "validation"
MEAN = "mean"


# ---------------------------------------------------------------- predictions (once per checkpoint)


def predict_champion(
    checkpoints: Sequence[str | os.PathLike],
    splits: Mapping[str, np.ndarray],
    stats: dict,
    *,
    tta: bool,
    batch_size: int = 256,
    device: str = "cpu",
    cpu_accelerator: str | bool = "auto",
) -> dict[str, np.ndarray]:
    """P(positive) of every checkpoint on every split: {'<split>_prob': (n_checkpoints, n)}.

    With tta the D4-averaged probabilities are stored as well ('<split>_prob_tta'), so the report
    can show what test-time augmentation changes.
    """
    from pcamflow.data.predictions import predict_proba
    from pcamflow.training.checkpoint import load_model

    options = {"batch_size": batch_size, "device": device, "cpu_accelerator": cpu_accelerator}
    out: dict[str, list[np.ndarray]] = {}
    for path in checkpoints:
        model, _ = load_model(path, device=device)
        for split, x in splits.items():
            prob = predict_proba(model, x, stats, **options)
            out.setdefault(f"{split}_prob", []).append(np.asarray(prob, dtype=np.float64))
            if tta:  # the plain pass is the identity view: 7 more passes, not 8
                prob_tta = predict_proba(model, x, stats, tta=True, plain=prob, **options)
                out.setdefault(f"{split}_prob_tta", []).append(np.asarray(prob_tta, dtype=np.float64))
        log.info("predicted %s on %s", path, ", ".join(splits))
    return {k: np.stack(v) for k, v in out.items()}


def save_predictions(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    from pcamflow.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise PcamflowError(f"{path}: champion predictions missing (run the predict_champion rule first)")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---------------------------------------------------------------- thresholds


def threshold_for_recall(y, prob, target: float) -> float:
    """The highest threshold t with recall(prob >= t) >= target on these labels (validation)."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        raise PcamflowError(
            "validation split holds no positive tiles: cannot choose a threshold for a target recall"
        )
    if not 0 < target <= 1:
        raise PcamflowError(f"evaluate.target_recall {target}: must be in (0, 1]")
    positives = np.sort(np.asarray(prob, dtype=np.float64)[y])[::-1]
    # rounded first: 0.95 * 20 must need 19 positives, not ceil(19.000000000000004) = 20
    needed = max(math.ceil(round(target * positives.size, 9)), 1)
    return float(positives[needed - 1])


# ---------------------------------------------------------------- metrics of one predictor


@dataclass
class Predictions:
    """One scored model on test: the probabilities and its thresholds by name."""

    predictor: str  # e.g. "champion", "majority class"
    member: str  # e.g. "seed 42"; "" for a baseline
    prob: np.ndarray  # (n,) P(positive) per test tile
    thresholds: dict[str, float]  # threshold name -> threshold (prob >= threshold is positive)


def bootstrap_metrics(
    y: np.ndarray, models: Sequence[Predictions], n_boot: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Per model: threshold name -> (n_boot, len(METRICS)) values on resamples shared by every model.

    Each resample draws len(y) tiles with replacement (seeded); NaN marks an undefined metric.
    """
    # Resamples counted, not copied into scikit-learn's calls: those took ~15x longer (minutes on full PCAM).
    rng = np.random.default_rng(seed)
    n = y.size
    ranked = [metrics.RankedScores(y, m.prob) for m in models]  # sorted once, not once per resample
    hard = [{t: m.prob >= threshold for t, threshold in m.thresholds.items()} for m in models]
    out = [{t: np.full((n_boot, len(METRICS)), np.nan) for t in m.thresholds} for m in models]
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)  # tile i drawn counts[i] times
        for ranks, preds, samples in zip(ranked, hard, out):
            ranking = ranks.auc_and_ap(counts)  # the same at every threshold: computed once
            for t, pred in preds.items():
                values = metrics.resampled_threshold_metrics(counts, y, pred) + ranking  # in METRICS order
                samples[t][b] = [math.nan if v is None else v for v in values]
    return out


def summarise(
    y: np.ndarray, models: Sequence[Predictions], boot: Sequence[Mapping[str, np.ndarray]], ci: float
) -> pd.DataFrame:
    """Long table, one row per (predictor, member, threshold name, metric): value, std, CI, reason.

    A predictor with several members (the champion's seeds) also gets a `mean` member: the mean
    over members, their sample std, and the interval of that mean over the shared resamples.
    """
    rows = []
    groups: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        groups.setdefault(model.predictor, []).append(i)
    for predictor, members in groups.items():
        for t in models[members[0]].thresholds:
            evaluated = [_evaluated(y, models[i], t) for i in members]
            if len(members) > 1:
                thresholds = [models[i].thresholds[t] for i in members]
                samples = np.mean([boot[i][t] for i in members], axis=0)  # NaN when a member is undefined
                rows += _metric_rows(
                    y, predictor, MEAN, t, float(np.mean(thresholds)), evaluated, samples, ci
                )
            for i, ev in zip(members, evaluated):
                model = models[i]
                rows += _metric_rows(y, predictor, model.member, t, model.thresholds[t], [ev], boot[i][t], ci)
    return pd.DataFrame(rows)


def _evaluated(y, model: Predictions, t: str) -> tuple[dict, np.ndarray]:
    """(point metrics, hard predictions) of one model at one of its thresholds on the full test split."""
    threshold = model.thresholds[t]
    return metrics.binary_metrics(y, model.prob, threshold), model.prob >= threshold


def _metric_rows(y, predictor, member, t, threshold, evaluated, samples, ci) -> list[dict]:
    """Rows of one (predictor, member, threshold): value (mean over models), std, CI from `samples`.

    A metric undefined for any of the models is left empty with the reason; resamples on which it is
    undefined are left out of the interval.
    """
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows = []
    for m, metric in enumerate(METRICS):
        values = [point[metric] for point, _ in evaluated]
        reason = next(
            (
                metrics.undefined_reason(y, metric, pred)
                for v, (_, pred) in zip(values, evaluated)
                if v is None
            ),
            None,
        )
        finite = samples[:, m][np.isfinite(samples[:, m])]
        defined = reason is None
        rows.append(
            {
                "predictor": predictor,
                "member": member,
                "threshold_name": t,
                "threshold": threshold,
                "metric": metric,
                "value": float(np.mean(values)) if defined else None,
                "std": float(np.std(values, ddof=1)) if defined and len(values) > 1 else None,
                "ci_low": float(np.quantile(finite, lo_q)) if defined and finite.size else None,
                "ci_high": float(np.quantile(finite, hi_q)) if defined and finite.size else None,
                "n_models": len(values),
                "undefined": reason or "",
            }
        )
    return rows


# ---------------------------------------------------------------- the whole evaluation


def majority_class(train_labels: np.ndarray) -> int:
    """The training set's majority class; an exact tie counts as negative."""
    return int(np.count_nonzero(train_labels) * 2 > len(train_labels))


def build_models(
    preds: Mapping[str, np.ndarray],
    seeds: Sequence[int],
    train_labels: np.ndarray,
    target_recall: float,
    tta: bool,
) -> tuple[list[Predictions], list[dict]]:
    """The champion's seeds (thresholds chosen on validation), its no-TTA variant with tta, the baselines."""
    variants = [("champion", "_tta"), ("champion without TTA", "")] if tta else [("champion", "")]
    models, thresholds = [], []
    for predictor, suffix in variants:
        for i, seed in enumerate(seeds):
            valid_prob, test_prob = preds[f"valid_prob{suffix}"][i], preds[f"test_prob{suffix}"][i]
            threshold = threshold_for_recall(preds["valid_y"], valid_prob, target_recall)
            models.append(
                Predictions(predictor, f"seed {seed}", test_prob, {AT_HALF: 0.5, AT_VALIDATION: threshold})
            )
            if predictor == "champion":
                thresholds.append(
                    {
                        "seed": int(seed),
                        "threshold": threshold,
                        "valid_recall": metrics.recall(preds["valid_y"], valid_prob >= threshold),
                        "test_recall": metrics.recall(preds["test_y"], test_prob >= threshold),
                    }
                )
    n = preds["test_y"].size
    majority = majority_class(train_labels)
    name = f"majority class ({'positive' if majority else 'negative'} in train)"
    models.append(Predictions(name, "", np.full(n, float(majority)), {AT_HALF: 0.5}))
    models.append(Predictions("always positive", "", np.ones(n), {AT_HALF: 0.5}))
    return models, thresholds


def evaluate_champion(
    preds: Mapping[str, np.ndarray], champion: dict, train_labels: np.ndarray, settings: dict
) -> tuple[pd.DataFrame, dict]:
    """The long metrics table (evaluate.csv) and the JSON summary (evaluate.json) of the champion on test."""
    seeds = [s["seed"] for s in champion["seeds"]]
    if len(preds["test_prob"]) != len(seeds):
        raise PcamflowError(
            f"predictions hold {len(preds['test_prob'])} checkpoints but the champion has {len(seeds)} seeds"
        )
    y = preds["test_y"].astype(bool)
    models, thresholds = build_models(preds, seeds, train_labels, settings["target_recall"], settings["tta"])
    boot = bootstrap_metrics(y, models, settings["bootstrap"], settings["seed"])
    table = summarise(y, models, boot, settings["ci"])
    deploy_seed = champion["deploy"]["seed"]
    summary = {
        "champion": champion["id"],
        "grid_point": champion["grid_point"],
        "seeds": seeds,
        "predictions": "mean over the 8 D4 transforms (TTA)" if settings["tta"] else "plain (no TTA)",
        "test": {"n": int(y.size), "positives": int(y.sum()), "negatives": int((~y).sum())},
        "bootstrap": {
            "resamples": settings["bootstrap"],
            "ci": settings["ci"],
            "seed": settings["seed"],
            "method": "percentile interval; each resample draws the test tiles with replacement "
            "and is shared by every model",
        },
        "target_recall": settings["target_recall"],
        "thresholds": thresholds,
        "metrics": nested_metrics(table),
        "deploy": {
            "seed": deploy_seed,
            "checkpoint": champion["deploy"]["checkpoint"],
            "threshold": next(t["threshold"] for t in thresholds if t["seed"] == deploy_seed),
        },
        "confusion": {
            t: {
                m.member: metrics.confusion(y, m.prob >= m.thresholds[t]).tolist()
                for m in models
                if m.predictor == "champion"
            }
            for t in (AT_HALF, AT_VALIDATION)
        },
    }
    summary["deploy"]["test"] = summary["metrics"]["champion"][f"seed {deploy_seed}"]
    return table, summary


def nested_metrics(table: pd.DataFrame) -> dict:
    """predictor -> member -> threshold name -> metric -> {value, std, ci_low, ci_high, undefined}."""
    out: dict = {}
    for row in table.to_dict("records"):
        member = row["member"] or "model"
        cell = {k: json_scalar(row[k]) for k in ("value", "std", "ci_low", "ci_high")}
        if row["undefined"]:
            cell["undefined"] = row["undefined"]
        slot = (
            out.setdefault(row["predictor"], {}).setdefault(member, {}).setdefault(row["threshold_name"], {})
        )
        slot["threshold"] = row["threshold"]
        slot[row["metric"]] = cell
    return out


def wide_table(table: pd.DataFrame, deploy_member: str) -> pd.DataFrame:
    """One row per (predictor, member, threshold), one column per metric: 'value ± std [low, high]'."""
    rows = []
    keys = ["predictor", "member", "threshold_name"]
    for (predictor, member, t), group in table.groupby(keys, sort=False):
        label = member if member != deploy_member else f"{member} (deployed)"
        value = group["threshold"].iloc[0]
        shown = "0.5" if t == AT_HALF else f"validation: {'mean ' if member == MEAN else ''}{value:.3f}"
        row = {"model": predictor, "member": label, "threshold": shown}
        for rec in group.to_dict("records"):
            row[rec["metric"]] = format_cell(rec)
        rows.append(row)
    return pd.DataFrame(rows)


def format_cell(rec: Mapping) -> str:
    if rec["value"] is None or (isinstance(rec["value"], float) and math.isnan(rec["value"])):
        return f"undefined ({rec['undefined']})"
    text = f"{rec['value']:.3f}"
    if rec.get("std") is not None and not math.isnan(rec["std"]):
        text += f" ± {rec['std']:.3f}"
    if rec.get("ci_low") is not None and not math.isnan(rec["ci_low"]):
        text += f" [{rec['ci_low']:.3f}, {rec['ci_high']:.3f}]"
    return text


def curves(y: np.ndarray, probs: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """ROC and PR curve coordinates per label (scikit-learn's curve points; the areas come from metrics)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = {}
    for label, prob in probs.items():
        fpr, tpr, _ = roc_curve(y, prob)
        precision, recall, _ = precision_recall_curve(y, prob)
        auc, ap = metrics.roc_auc(y, prob), metrics.average_precision(y, prob)
        name = f"{label} (AUC {auc:.3f}, AP {ap:.3f})" if auc is not None and ap is not None else label
        out[name] = {"fpr": fpr, "tpr": tpr, "recall": recall, "precision": precision}
    return out


def operating_point(y: np.ndarray, prob: np.ndarray, threshold: float, label: str, marker: str = "o") -> dict:
    """Where one model at one threshold sits on the ROC and PR planes (None where undefined)."""
    pred = prob >= threshold
    (tn, fp), (_, _) = metrics.confusion(y, pred)
    negatives = tn + fp
    return {
        "label": label,
        "marker": marker,
        "fpr": fp / negatives if negatives else None,
        "tpr": metrics.recall(y, pred),
        "recall": metrics.recall(y, pred),
        "precision": metrics.precision(y, pred),
    }


# ---------------------------------------------------------------- rule entry points


def write_champion_predictions(
    champion_json,
    store_dir,
    out,
    *,
    tta: bool,
    batch_size: int,
    device: str,
    cpu_accelerator: str | bool = "auto",
) -> None:
    """predictions.npz: each champion checkpoint's P(positive) on valid and test, labels, test raw indices."""
    from pcamflow.data.store import load_split, load_stats, verify_store
    from pcamflow.io import read_json
    from pcamflow.training.device import resolve_device

    verify_store(store_dir, ("valid", "test"))  # once per job, before reading a tile
    champion = read_json(champion_json)
    valid, test = load_split(store_dir, "valid"), load_split(store_dir, "test")
    checkpoints = [s["checkpoint"] for s in champion["seeds"]]
    arrays = predict_champion(
        checkpoints,
        {"valid": valid.x, "test": test.x},
        load_stats(store_dir),
        tta=tta,
        batch_size=batch_size,
        device=str(resolve_device(device)),
        cpu_accelerator=cpu_accelerator,
    )
    arrays.update(
        seeds=np.array([s["seed"] for s in champion["seeds"]]),
        valid_y=np.asarray(valid.y),
        test_y=np.asarray(test.y),
        test_index=np.asarray(test.index),
    )
    save_predictions(out, arrays)


def write_evaluation(predictions, champion_json, train_labels, settings, out) -> dict:
    """evaluate.json, evaluate.csv, the HTML table, confusion matrices and ROC/PR curves.

    `train_labels` is the prepared store's train_y.npy (for the majority-class baseline); `out`
    maps json, csv, html, confusion, curves to paths.
    """
    from pcamflow.io import read_json, write_csv, write_json
    from pcamflow.plots import html_table, plot_confusions, plot_roc_pr

    preds = load_predictions(predictions)
    champion = read_json(champion_json)
    train_y = np.load(train_labels)
    table, summary = evaluate_champion(preds, champion, train_y, settings)
    write_csv(out["csv"], table)
    write_json(out["json"], summary)
    deploy_member = f"seed {summary['deploy']['seed']}"
    html_table(
        wide_table(table, deploy_member),
        f"Champion {champion['id']} on test, beside the trivial baselines",
        out["html"],
        notes=evaluation_notes(summary),
    )
    y = preds["test_y"].astype(bool)
    suffix = "_tta" if settings["tta"] else ""
    probs = dict(zip([f"seed {s}" for s in summary["seeds"]], preds[f"test_prob{suffix}"]))
    plot_confusions(confusion_panels(summary), out["confusion"])
    deploy_prob = probs[deploy_member]
    markers = [
        operating_point(y, deploy_prob, 0.5, f"{deploy_member} at 0.5", "o"),
        operating_point(
            y, deploy_prob, summary["deploy"]["threshold"], f"{deploy_member} at validation threshold", "s"
        ),
        operating_point(y, np.ones(y.size), 0.5, "always positive", "^"),
        operating_point(y, np.full(y.size, float(majority_class(train_y))), 0.5, "majority class", "v"),
    ]
    plot_roc_pr(curves(y, probs), markers, float(y.mean()), out["curves"])
    return summary


def confusion_panels(summary: dict) -> list[list[tuple[str, list]]]:
    """One row of (title, matrix) per threshold, one panel per champion seed."""
    thresholds = {f"seed {t['seed']}": t["threshold"] for t in summary["thresholds"]}
    panels = []
    for name, matrices in summary["confusion"].items():
        panels.append(
            [
                (
                    f"{member}\nthreshold {0.5 if name == AT_HALF else thresholds[member]:.3f}"
                    + ("" if name == AT_HALF else f" (val recall >= {summary['target_recall']})"),
                    cm,
                )
                for member, cm in matrices.items()
            ]
        )
    return panels


def evaluation_notes(summary: dict) -> list[str]:
    boot = summary["bootstrap"]
    thresholds = ", ".join(f"seed {t['seed']}: {t['threshold']:.3f}" for t in summary["thresholds"])
    return [
        f"Test split: {summary['test']['n']} tiles, {summary['test']['positives']} positive. "
        f"Predictions: {summary['predictions']}.",
        f"Cells: value ± std over the champion's seeds (mean rows) [{boot['ci']:.0%} bootstrap interval].",
        f"Intervals: {boot['resamples']} bootstrap resamples of the test tiles (seed {boot['seed']}), "
        "shared by every row.",
        f"Validation threshold: chosen per seed on validation for recall >= {summary['target_recall']}, "
        f"applied unchanged to test ({thresholds}).",
        f"Published reference on full PCAM: {REFERENCE['model']}, test accuracy {REFERENCE['test_accuracy']}, "
        f"ROC-AUC {REFERENCE['test_auc']} (for orientation only on other data).",
    ]
