"""Figures and HTML tables of the sweep, the evaluation and the slices (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pcamflow.io import atomic_path, write_text  # noqa: E402
from pcamflow.rundir import epoch_panels  # noqa: E402

DPI = 110
# (panel title, [(history key, label)]) of the per-epoch training curves
EPOCH_PANELS = epoch_panels()
STEP_PANELS = (
    ("train_loss_step", "training loss"),
    ("grad_norm", "global gradient norm"),
    ("lr", "learning rate"),
)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a figure atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_message(text: str, path: str | os.PathLike) -> None:
    """A figure that only says why there is nothing to plot (e.g. every seed of a grid point failed)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    save_figure(fig, path)


def epoch_frame(histories: Mapping[int, dict]) -> pd.DataFrame:
    """All seeds' epoch records in one frame with a `seed` column."""
    return pd.DataFrame([dict(e, seed=seed) for seed, h in histories.items() for e in h["epochs"]])


def plot_training_curves(histories: Mapping[int, dict], title: str, path: str | os.PathLike) -> None:
    """Per-epoch curves of one grid point: mean over seeds, a +-1 std band, dotted lines at best epochs."""
    frame = epoch_frame(histories)
    fig, axes = plt.subplots(
        1, len(EPOCH_PANELS), figsize=(4.2 * len(EPOCH_PANELS), 3.6), layout="constrained"
    )
    for ax, (panel, series) in zip(axes, EPOCH_PANELS):
        for key, label in series:
            stats = frame.groupby("epoch")[key].agg(["mean", "std"]).astype(float)
            std = stats["std"].fillna(0.0)
            line = ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=label)[0]
            ax.fill_between(
                stats.index, stats["mean"] - std, stats["mean"] + std, alpha=0.2, color=line.get_color()
            )
        for h in histories.values():
            ax.axvline(h["best_epoch"], color="grey", lw=0.8, ls=":")
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{title}  (mean and ±1 std over {len(histories)} seed(s); dotted: best epochs)", fontsize=10
    )
    save_figure(fig, path)


def plot_steps(histories: Mapping[int, dict], title: str, path: str | os.PathLike) -> None:
    """Per-step training loss, global gradient norm and learning rate, one line per seed."""
    fig, axes = plt.subplots(1, len(STEP_PANELS), figsize=(4.2 * len(STEP_PANELS), 3.6), layout="constrained")
    for ax, (key, label) in zip(axes, STEP_PANELS):
        for seed, h in histories.items():
            points = [(s["step"], s[key]) for s in h.get("steps", []) if s.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, lw=1, marker="." if len(points) < 30 else None, label=f"seed {seed}")
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_parallel_coordinates(
    ranked: pd.DataFrame, grid_keys: Sequence[str], metric: str, path: str | os.PathLike
) -> None:
    """One line per grid point across the grid's axes and the metric's mean; the champion drawn bold."""
    axes_names = [*grid_keys, f"{metric}_mean"]
    positions = {}
    for key in grid_keys:  # categorical axes: each value at an equally spaced position in [0, 1]
        values = sorted(ranked[key].unique(), key=lambda v: (isinstance(v, str), v))
        step = 1.0 / max(len(values) - 1, 1)
        positions[key] = {v: (i * step if len(values) > 1 else 0.5) for i, v in enumerate(values)}
    scores = ranked[f"{metric}_mean"].astype(float)
    low, high = float(np.nanmin(scores)), float(np.nanmax(scores))
    span = high - low or 1.0
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(1.9 * len(axes_names) + 1.5, 4.2))
    for _, row in ranked.iterrows():
        score = float(row[f"{metric}_mean"])
        ys = [positions[k][row[k]] for k in grid_keys] + [(score - low) / span if np.isfinite(score) else 0.0]
        champion = row["rank"] == 1
        ax.plot(
            range(len(axes_names)),
            ys,
            color="crimson" if champion else cmap((score - low) / span if np.isfinite(score) else 0.0),
            lw=3 if champion else 1.4,
            alpha=1 if champion else 0.8,
            zorder=3 if champion else 2,
            marker="o",
            label="champion" if champion else None,
        )
    for i, key in enumerate(grid_keys):
        for value, y in positions[key].items():
            ax.annotate(
                str(value), (i, y), xytext=(4, 0), textcoords="offset points", fontsize=8, va="center"
            )
    for frac in (0.0, 0.5, 1.0):
        ax.annotate(
            f"{low + frac * span:.4f}",
            (len(grid_keys), frac),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
        )
    for i in range(len(axes_names)):
        ax.axvline(i, color="black", lw=0.8)
    ax.set_xticks(range(len(axes_names)), axes_names)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.2, len(axes_names) - 0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    ax.set_title(
        f"grid points by mean {metric} over seeds (colour: {metric}; red: the champion)", fontsize=10
    )
    save_figure(fig, path)


def plot_confusions(rows: Sequence[Sequence[tuple[str, np.ndarray]]], path: str | os.PathLike) -> None:
    """Confusion matrices on a grid: rows of (title, 2 x 2 counts [[tn, fp], [fn, tp]])."""
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.9 * n_cols, 2.8 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (title, cm) in enumerate(row):
            ax, cm = axes[r][c], np.asarray(cm)
            ax.axis("on")
            ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.sum()), 1))
            for (i, j), count in np.ndenumerate(cm):
                ax.text(j, i, f"{count}", ha="center", va="center", fontsize=10)
            ax.set_xticks([0, 1], ["pred 0", "pred 1"])
            ax.set_yticks([0, 1], ["true 0", "true 1"])
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_roc_pr(
    curves: Mapping[str, dict], markers: Sequence[dict], prevalence: float, path: str | os.PathLike
) -> None:
    """ROC and PR curves.

    curves: label -> {fpr, tpr, recall, precision}; markers: [{label, marker, fpr, tpr, recall, precision}].
    """
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.3))
    for label, c in curves.items():
        roc.plot(c["fpr"], c["tpr"], lw=1.2, label=label)
        pr.plot(c["recall"], c["precision"], lw=1.2, label=label)
    roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance")
    pr.axhline(prevalence, color="grey", ls="--", lw=0.8, label=f"chance (prevalence {prevalence:.2f})")
    for m in markers:
        style = {"marker": m.get("marker", "o"), "s": 40, "zorder": 4, "label": m["label"]}
        if m.get("fpr") is not None:
            roc.scatter([m["fpr"]], [m["tpr"]], **style)
        if m.get("precision") is not None:
            pr.scatter([m["recall"]], [m["precision"]], **style)
    roc.set(
        xlabel="false positive rate",
        ylabel="true positive rate (recall)",
        title="ROC",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
    )
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(-0.01, 1.01), ylim=(0, 1.01))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    save_figure(fig, path)


def plot_gallery(
    tiles: np.ndarray, labels: Sequence[str], title: str, path: str | os.PathLike, columns: int = 8
) -> None:
    """Tiles in true colours (uint8 RGB, no interpolation), each with its label; a note when empty."""
    n = len(tiles)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.4, 1.8 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, label in zip(axes.ravel(), tiles, labels):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(label, fontsize=7)
    if n == 0:
        axes[0][0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=12)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def plot_intensity_histogram(
    intensity: np.ndarray, y: np.ndarray, dark: float, bright: float, title: str, path: str | os.PathLike
) -> None:
    """Histogram of per-tile mean intensity (0..1) by class, with the dark and bright slice thresholds
    drawn and the number of tiles in each slice written beside them."""
    y = np.asarray(y).astype(bool)
    bins = np.linspace(0.0, 1.0, 51)
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    ax.hist([intensity[~y], intensity[y]], bins=bins, stacked=True, label=["negative", "positive"])
    top = ax.get_ylim()[1]
    for x, name in ((dark, "dark"), (bright, "bright")):
        ax.axvline(x, color="black", ls="--", lw=1.2)
        ax.text(x, top * 0.97, f" {name} {x:g}", va="top", ha="left", fontsize=8)
    counts = {
        "dark": int((intensity < dark).sum()),
        "middle": int(((intensity >= dark) & (intensity <= bright)).sum()),
        "bright": int((intensity > bright).sum()),
    }
    ax.set_xlabel("mean intensity of the tile (fraction of full scale)")
    ax.set_ylabel("tiles")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title}\n" + ", ".join(f"{k} {v}" for k, v in counts.items()), fontsize=9)
    save_figure(fig, path)


def html_table(frame: pd.DataFrame, title: str, path: str | os.PathLike, notes: Sequence[str] = ()) -> None:
    """A small self-contained HTML page with one table (shown inline by the Snakemake report)."""
    body = frame.to_html(index=False, na_rep="", escape=True, border=0, classes="pcamflow")
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    write_text(
        path,
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_TABLE_CSS}</style></head>"
        f"<body><h3>{html.escape(title)}</h3><div class='scroll'>{body}</div>{note_html}</body></html>\n",
    )


_TABLE_CSS = (
    "body{font-family:sans-serif;font-size:13px;margin:12px}"
    "table{border-collapse:collapse}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
    # wide tables wrap their text cells and, if still too wide, scroll inside the page
    ".scroll{max-width:100%;overflow-x:auto}td{overflow-wrap:break-word}"
    "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "p{color:#444;max-width:60em}"
)
