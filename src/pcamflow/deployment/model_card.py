"""MODEL_CARD.md of a model bundle: what the model is, what it was trained and tested on, how well,
and where not to use it. The text is templates/model_card.md.j2; this module computes the values
and the two tables (test metrics, slices) it shows."""

from __future__ import annotations

import math

from pcamflow.deployment.bundle_files import DRIFT_FILE, MANIFEST_FILE, META_FILE, MODEL_FILE
from pcamflow.deployment.render import render_template

TEMPLATE = "model_card.md.j2"
METRIC_LABELS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f2": "F2",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
}
WEAK_MARGIN = 0.05  # a slice is weak when its recall or accuracy is this far below all tiles'
WEAK_MIN_TILES = 10  # smaller slices are listed but never called weak: too few to tell


def model_card(
    *,
    metadata: dict,
    champion: dict,
    evaluation: dict,
    slices,
    run_config: dict,
    stats: dict,
    threshold: float,
) -> str:
    """MODEL_CARD.md for the deployed checkpoint described by `metadata` (see export.export_champion)."""
    seed = metadata["seed"]
    git = metadata.get("git") or {}
    test, bootstrap = evaluation["test"], evaluation["bootstrap"]
    overall = slices.loc[slices["family"] == "all"].iloc[0]
    slice_rows, n_weak = _slice_rows(slices, overall)
    return render_template(
        TEMPLATE,
        champion=metadata["champion"],
        synthetic=metadata["dataset"] == "synthetic",
        grid_point=", ".join(f"{k} {v}" for k, v in metadata["grid_point"].items()),
        n_ranked=len(champion.get("ranking", [])),
        champion_rule=champion["rule"],
        seed=seed,
        best_epoch=metadata["best_epoch"],
        selection_metric=run_config["training"]["selection_metric"],
        n_params=f"{champion['n_params']:,}",
        training=_training_line(run_config["training"]),
        commit=git.get("commit"),
        dirty=bool(git.get("dirty")),
        dataset=metadata["dataset"],
        data_checksum=metadata.get("data_checksum"),
        splits=[
            {"name": split, "kept": c.get("kept", "?"), "dropped": c.get("dropped_total", 0)}
            for split, c in stats.get("counts", {}).items()
        ],
        mean=", ".join(f"{v:.4f}" for v in stats["mean"]),
        std=", ".join(f"{v:.4f}" for v in stats["std"]),
        threshold=f"{threshold:.4f}",
        threshold_rule=metadata["threshold_rule"],
        tta=bool(metadata["tta"]),
        test_n=test["n"],
        test_positives=test["positives"],
        predictions=evaluation["predictions"],
        n_seeds=len(evaluation["seeds"]),
        ci=f"{bootstrap['ci']:.0%}",
        resamples=bootstrap["resamples"],
        metrics_table=_metrics_table(evaluation, seed),
        n_weak=n_weak,
        weak_margin=WEAK_MARGIN,
        overall_accuracy=f"{overall['accuracy']:.3f}",
        overall_recall=f"{overall['recall']:.3f}",
        slices_table=_table(
            ("family", "slice", "n", "positives", "accuracy", "recall", "precision", "F2", "ROC AUC", "note"),
            slice_rows,
        ),
        model_file=MODEL_FILE,
        meta_file=META_FILE,
        manifest_file=MANIFEST_FILE,
        drift_file=DRIFT_FILE,
    )


def _training_line(training: dict) -> str:
    keys = ("epochs", "scheduler", "weight_decay", "augment", "sampler", "amp")
    return ", ".join(f"{k} {training[k]}" for k in keys if k in training)


def _table(head, rows) -> str:
    """A Markdown table: header, rule, one line per row of cells."""
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def _metrics_table(evaluation: dict, seed: int) -> str:
    """Deployed seed and champion mean at both thresholds, and the baselines: value ± std [CI]."""
    from pcamflow.evaluation.evaluate import format_cell

    rows = []
    for predictor, members in evaluation["metrics"].items():
        for member, by_threshold in members.items():
            if predictor.startswith("champion") and member not in (f"seed {seed}", "mean"):
                continue
            for name, cells in by_threshold.items():
                label = predictor if member in ("model", "") else f"{predictor}, {member}"
                if member == f"seed {seed}":
                    label += " (deployed)"
                where = "0.5" if name == "0.5" else f"validation ({cells['threshold']:.3f})"
                values = [format_cell(cells[m]) if m in cells else "" for m in METRIC_LABELS]
                rows.append([label, where, *values])
    return _table(["model", "threshold", *METRIC_LABELS.values()], rows)


def _slice_rows(slices, overall) -> tuple[list[list], int]:
    """Every slice of the deployed model on test, weak ones (recall or accuracy well below all
    tiles') first; and how many are weak."""
    rows = []
    for rec in slices.loc[slices["family"] != "all"].to_dict("records"):
        gaps = [
            f"{m} {rec[m]:.3f} vs {overall[m]:.3f}"
            for m in ("recall", "accuracy")
            if rec["n"] >= WEAK_MIN_TILES and _below(rec[m], overall[m])
        ]
        verdict = (
            "**weak**: " + "; ".join(gaps) if gaps else ("too few tiles" if rec["n"] < WEAK_MIN_TILES else "")
        )
        cells = [_number(rec[m]) for m in ("accuracy", "recall", "precision", "f2", "roc_auc")]
        row = [
            rec["family"],
            rec["slice"],
            rec["n"],
            rec["positives"],
            *cells,
            verdict or _text(rec.get("undefined")),
        ]
        rows.append((not gaps, row))
    weak = sum(not ok for ok, _ in rows)
    return [row for _, row in sorted(rows, key=lambda r: r[0])], weak


def _below(value, reference) -> bool:
    return value is not None and not math.isnan(value) and value < reference - WEAK_MARGIN


def _text(value) -> str:
    """A CSV cell as text: an empty cell reads back as NaN."""
    return value if isinstance(value, str) else ""


def _number(value) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"
