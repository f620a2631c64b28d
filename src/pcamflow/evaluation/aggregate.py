"""Sweep aggregation: one row per run, mean and std over seeds per grid point, and the champion.

A run's validation metrics are taken at its best epoch (by the run's own selection metric, the
epoch checkpoint_best.pt holds), so the averaged numbers describe the checkpoints that the
evaluation uses. The champion is chosen on validation only; `CHAMPION_RULE` states the order.
Runs that failed for good (pcamflow.training.runstatus) are listed in runs.csv with their reason and left
out of every mean; a grid point competes for champion only with enough successful seeds.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_dir, json_scalar, read_json
from pcamflow.metrics import is_better
from pcamflow.rundir import (
    BEST_CHECKPOINT,
    HISTORY,
    LOWER_IS_BETTER,
    RUN_INFO,
    VAL_METRICS,
    point_id,
    seed_dir,
)
from pcamflow.training.runstatus import DONE, FAILED, failure_category, run_status

log = logging.getLogger("pcamflow.evaluation.aggregate")

HISTORY_KEYS = ("selection_metric", "best_epoch", "epochs")
CHAMPION_RULE = (
    "best mean over seeds of {metric} at each run's best epoch ({direction} is better), among grid points "
    "with at least {min_seeds} successful seed(s); ties go to the lower std over seeds, then to fewer "
    "trainable parameters, then to the earlier grid point in config order"
)


def better(metric: str) -> str:
    """'lower' or 'higher': which direction is better for a validation metric."""
    return "lower" if metric in LOWER_IS_BETTER else "higher"


def load_history(run_dir: str | os.PathLike) -> dict:
    """A run's history.json, checked for the keys aggregation reads; problems are one clear line."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        raise PcamflowError(f"{path}: run history missing (train this run first, or remove the run dir)")
    try:
        history = read_json(path)
    except ValueError as exc:
        raise PcamflowError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in HISTORY_KEYS if k not in history] if isinstance(history, dict) else HISTORY_KEYS
    if missing:
        raise PcamflowError(f"{path}: not a run history (missing {', '.join(missing)})")
    if not history["epochs"]:
        raise PcamflowError(f"{path}: the run history holds no epochs")
    best = history["best_epoch"]
    if not 1 <= best <= len(history["epochs"]):
        raise PcamflowError(f"{path}: best_epoch {best} outside epochs 1..{len(history['epochs'])}")
    return history


def best_epoch_row(history: dict) -> dict:
    """The epoch record of the best epoch (best_epoch is 1-based)."""
    return history["epochs"][history["best_epoch"] - 1]


def run_row(point: dict, seed: int, run_dir: str | os.PathLike) -> dict:
    """One runs.csv row: grid values, seed, status (with the reason and attempts of a failed run),
    best epoch, metrics at the best and final epoch, timing. A failed run's metrics are empty."""
    status = run_status(run_dir)
    if status["status"] == FAILED:
        failure = status["failure"] or {}
        return dict(
            point,
            seed=seed,
            status=FAILED,
            failure_reason=failure.get("reason", ""),
            # what failed: `run` (the run itself) or what else (disk, software, cache, node)
            failure_category=failure_category(failure),
            attempts=failure.get("attempts"),
            run_dir=str(run_dir),
        )
    history = load_history(run_dir)
    best, final = best_epoch_row(history), history["epochs"][-1]
    info_path = Path(run_dir) / RUN_INFO
    info = read_json(info_path) if info_path.exists() else {}
    speeds = [e["img_per_s"] for e in history["epochs"] if e.get("img_per_s") is not None]
    row = dict(point, seed=seed, status=DONE, failure_reason="", failure_category="", attempts=None)
    row.update(
        selection_metric=history["selection_metric"],
        best_epoch=history["best_epoch"],
        epochs=len(history["epochs"]),
    )
    for metric in VAL_METRICS:
        row[f"{metric}_at_best"] = best.get(metric)
    for metric in ("train_loss", *VAL_METRICS):
        row[f"{metric}_final"] = final.get(metric)
    row["train_time_s"] = info.get("train_time_s")
    row["img_per_s"] = float(np.mean(speeds)) if speeds else None
    row["run_dir"] = str(run_dir)
    return row


def runs_table(
    runs: Sequence[dict], run_dirs: Sequence[str | os.PathLike], grid_keys: Sequence[str]
) -> pd.DataFrame:
    """runs.csv: one row per run. `runs` are dicts of grid values plus `seed`, aligned with run_dirs."""
    if len(runs) != len(run_dirs):
        raise ValueError(f"{len(runs)} runs but {len(run_dirs)} run directories")
    if not runs:
        raise PcamflowError("no runs to aggregate (the grid or the seed list is empty)")
    rows = [run_row({k: run[k] for k in grid_keys}, run["seed"], d) for run, d in zip(runs, run_dirs)]
    columns = list(dict.fromkeys(k for row in rows if row["status"] == DONE for k in row))
    columns = columns or list(rows[0])  # every run failed
    table = pd.DataFrame(rows, columns=list(dict.fromkeys([*columns, *rows[0]])))
    table["attempts"] = table["attempts"].astype("Int64")
    return table


def failed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs.csv whose run failed for good."""
    return runs.loc[runs["status"] == FAILED]


def metrics_avg(runs: pd.DataFrame, grid_keys: Sequence[str]) -> pd.DataFrame:
    """metrics_avg.csv: per grid point, n_seeds (successful) of n_planned, and <metric>_mean/_std over
    the successful seeds at each run's best epoch.

    std is the sample standard deviation (n - 1); it is empty for a grid point with one seed, and
    every metric is empty for a grid point whose seeds all failed. Grid points keep the order in
    which they first appear in `runs` (config order).
    """
    keys = list(grid_keys)
    runs = runs.copy()
    numeric = [f"{m}_at_best" for m in VAL_METRICS] + ["best_epoch", "train_time_s"]
    for column in numeric:
        runs[column] = runs[column].astype(float) if column in runs else np.nan
    ok = runs["status"] == DONE
    grouped = runs.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(
        n_seeds=("status", lambda s: int((s == DONE).sum())),
        n_planned=("seed", "count"),
        seeds=("seed", lambda s: " ".join(str(seed) for seed in s[ok[s.index]])),
        failed_seeds=("seed", lambda s: " ".join(str(seed) for seed in s[~ok[s.index]])),
    )
    grouped = runs.where(ok).assign(**{k: runs[k] for k in keys}).groupby(keys, sort=False, dropna=False)
    for metric in VAL_METRICS:
        table[f"{metric}_mean"] = grouped[f"{metric}_at_best"].mean()
        table[f"{metric}_std"] = grouped[f"{metric}_at_best"].std(ddof=1)
    table["best_epoch_mean"] = grouped["best_epoch"].mean()
    table["train_time_s_mean"] = grouped["train_time_s"].mean()
    return table.reset_index()


def mean_std_view(avg: pd.DataFrame, grid_keys: Sequence[str]) -> pd.DataFrame:
    """metrics_avg as a reader sees it: one 'mean ± std' cell per metric."""
    view = avg[list(grid_keys)].copy()
    view["seeds ok / planned"] = [
        f"{ok} / {planned}" for ok, planned in zip(avg["n_seeds"], avg["n_planned"])
    ]
    for metric in VAL_METRICS:
        mean, std = avg[f"{metric}_mean"], avg[f"{metric}_std"]
        view[metric] = [
            "" if pd.isna(m) else f"{m:.4f}" + ("" if pd.isna(s) else f" ± {s:.4f}")
            for m, s in zip(mean, std)
        ]
    view["best epoch (mean)"] = avg["best_epoch_mean"].round(1)
    view["train time s (mean)"] = avg["train_time_s_mean"].round(1)
    return view


def rank_grid_points(
    avg: pd.DataFrame, metric: str, n_params: Sequence[int], min_seeds: int = 1
) -> pd.DataFrame:
    """avg with `n_params` and `rank` (1 = champion) by CHAMPION_RULE; rows stay in config order.

    Grid points with fewer than min_seeds successful seeds are not ranked (rank empty)."""
    if f"{metric}_mean" not in avg:
        raise PcamflowError(f"champion.metric '{metric}': not a column of metrics_avg.csv")
    if avg.empty:
        raise PcamflowError("metrics_avg.csv holds no grid points")
    eligible = avg["n_seeds"] >= min_seeds
    if not eligible.any():
        raise PcamflowError(
            f"no grid point has {min_seeds} successful seed(s) (champion.min_seeds); see the failed runs "
            "in runs.csv"
        )
    table = avg.copy()
    table["n_params"] = list(n_params)
    full = table
    table = table.loc[eligible]
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    keys = pd.DataFrame(
        {
            # rounded so that float noise in the 13th digit is a tie, not a win
            "primary": (sign * table[f"{metric}_mean"].astype(float)).round(12),
            "std": table[f"{metric}_std"].astype(float).fillna(math.inf).round(12),
            "params": table["n_params"],
            "order": np.arange(len(table)),
        }
    )
    if keys["primary"].isna().all():
        raise PcamflowError(f"champion.metric '{metric}': undefined for every grid point")
    keys["primary"] = keys["primary"].fillna(math.inf)  # a grid point without the metric ranks last
    order = keys.sort_values(["primary", "std", "params", "order"], kind="stable").index
    full = full.assign(rank=np.nan)  # float: NaN for a grid point without enough successful seeds
    full.loc[order, "rank"] = np.arange(1, len(table) + 1)
    return full


def choose_champion(
    runs: pd.DataFrame, ranked: pd.DataFrame, grid_keys: Sequence[str], metric: str, min_seeds: int = 1
) -> dict:
    """champion.json: the grid point ranked first, the rule, its numbers, checkpoints and the ranking.

    `ranked` is rank_grid_points' table. `deploy` is the champion's seed with the best validation
    value (ties: the earlier seed in the config): the one checkpoint that slices, galleries and an
    exported model use.
    """
    winner = ranked.loc[ranked["rank"] == 1].iloc[0]
    point = {k: json_scalar(winner[k]) for k in grid_keys}
    mine = runs.loc[(runs[list(grid_keys)] == pd.Series(point)).all(axis=1) & (runs["status"] == DONE)]
    seeds = []
    for _, run in mine.iterrows():
        seeds.append(
            {
                "seed": int(run["seed"]),
                "run_dir": run["run_dir"],
                "checkpoint": str(Path(run["run_dir"]) / BEST_CHECKPOINT),
                "best_epoch": int(run["best_epoch"]),
                metric: json_scalar(run[f"{metric}_at_best"]),
            }
        )
    deploy = seeds[0]
    for seed in seeds[1:]:
        if is_better(seed[metric], deploy[metric], metric):  # strictly: a tie keeps the earlier seed
            deploy = seed
    columns = [*grid_keys, "n_seeds", f"{metric}_mean", f"{metric}_std", "n_params", "rank"]
    ranking = ranked.dropna(subset=["rank"]).sort_values("rank")[columns].astype({"rank": int})
    return {
        "grid_point": point,
        "id": point_id(point, grid_keys),
        "metric": metric,
        "direction": better(metric),
        "rule": CHAMPION_RULE.format(metric=metric, direction=better(metric), min_seeds=min_seeds),
        "min_seeds": min_seeds,
        "not_ranked": [
            point_id(row, grid_keys) for row in ranked.loc[ranked["rank"].isna()].to_dict("records")
        ],
        "mean": json_scalar(winner[f"{metric}_mean"]),
        "std": json_scalar(winner[f"{metric}_std"]),
        "n_seeds": int(winner["n_seeds"]),
        "n_params": int(winner["n_params"]),
        "means": {m: json_scalar(winner[f"{m}_mean"]) for m in VAL_METRICS},
        "stds": {m: json_scalar(winner[f"{m}_std"]) for m in VAL_METRICS},
        "seeds": seeds,
        "deploy": deploy,
        "ranking": [{k: json_scalar(v) for k, v in row.items()} for row in ranking.to_dict("records")],
    }


def count_parameters(model_name: str, training: dict) -> int:
    """Trainable parameters of a registered model built with these training settings."""
    from pcamflow.training.models import build_architecture

    model = build_architecture(model_name, training)
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


# ---------------------------------------------------------------- rule entry points


def write_aggregate(runs, run_dirs, grid_keys, runs_csv, avg_csv, avg_html, failed_txt) -> pd.DataFrame:
    """runs.csv, metrics_avg.csv and its HTML view for the report, and the list of failed runs."""
    from pcamflow.io import write_csv, write_text
    from pcamflow.plots import html_table

    table = runs_table(runs, run_dirs, grid_keys)
    avg = metrics_avg(table, grid_keys)
    write_csv(runs_csv, table)
    write_csv(avg_csv, avg)
    failed = failed_runs(table)
    write_text(failed_txt, "".join(f"{Path(d) / RUN_INFO}\n" for d in failed["run_dir"]))
    for _, run in failed.iterrows():
        log.warning("failed run %s (%s attempts): %s", run["run_dir"], run["attempts"], run["failure_reason"])
    html_table(
        mean_std_view(avg, grid_keys),
        "Validation metrics per grid point: mean ± std over seeds",
        avg_html,
        notes=[
            "Each run contributes its metrics at its best epoch (by its selection metric, the epoch of "
            "checkpoint_best.pt); std is the sample standard deviation over seeds (absent for one seed).",
            "Seeds ok / planned: runs that failed on every attempt are left out of the means (runs.csv "
            "gives their reasons).",
        ],
    )
    return avg


def write_champion(
    runs_csv, avg_csv, grid_keys, metric, training, champion_json, parallel_png, min_seeds=None
) -> dict:
    """champion.json and the parallel-coordinates plot of the grid."""
    from pcamflow.io import write_json
    from pcamflow.plots import plot_parallel_coordinates

    runs, avg = _read_table(runs_csv), _read_table(avg_csv)
    n_params = _parameter_counts(avg["model"], training) if "model" in avg else [0] * len(avg)
    min_seeds = int(avg["n_planned"].max()) if min_seeds is None else int(min_seeds)
    ranked = rank_grid_points(avg, metric, n_params, min_seeds)
    champion = choose_champion(runs, ranked, grid_keys, metric, min_seeds)
    write_json(champion_json, champion)
    plot_parallel_coordinates(ranked, grid_keys, metric, parallel_png)
    return champion


def plot_grid_point(point: dict, seeds, run_dirs, epochs_png, steps_png, grid_keys) -> None:
    """Training curves (mean and std band over seeds) and per-step plots of one grid point."""
    from pcamflow.plots import plot_steps, plot_training_curves

    histories = {
        int(seed): load_history(d) for seed, d in zip(seeds, run_dirs) if run_status(d)["status"] == DONE
    }
    title = point_id(point, grid_keys)
    if not histories:
        from pcamflow.plots import plot_message

        for path in (epochs_png, steps_png):
            plot_message(f"{title}\nevery seed failed (runs.csv gives the reasons)", path)
        return
    plot_training_curves(histories, title, epochs_png)
    plot_steps(histories, title, steps_png)


def write_sweep_tensorboard(runs, run_dirs, grid_keys, out_dir) -> None:
    """TensorBoard HParams of the whole sweep: one sub-run per (grid point, seed) with its best-epoch
    validation metrics as HParams metrics and its per-epoch validation curves as scalars."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for run, run_dir in zip(runs, run_dirs):
            if run_status(run_dir)["status"] != DONE:
                continue
            history = load_history(run_dir)
            params = {k: run[k] for k in grid_keys} | {"seed": run["seed"]}
            params = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
            best = best_epoch_row(history)
            scores = {f"best/{m}": float(best[m]) for m in VAL_METRICS if best.get(m) is not None}
            log_dir = tmp / point_id(run, grid_keys) / seed_dir(run["seed"])
            with SummaryWriter(log_dir=str(log_dir)) as writer:
                for summary in hparams(params, scores):
                    writer.file_writer.add_summary(summary)
                for name, value in scores.items():
                    writer.add_scalar(name, value, history["best_epoch"])
                for epoch in history["epochs"]:
                    for metric in VAL_METRICS:
                        if epoch.get(metric) is not None:
                            writer.add_scalar(f"epoch/{metric}", epoch[metric], epoch["epoch"])


def _read_table(path) -> pd.DataFrame:
    if not Path(path).exists():
        raise PcamflowError(f"{path}: missing (run the aggregate rule first)")
    return pd.read_csv(path)


def _parameter_counts(models: pd.Series, training: dict) -> list[int]:
    counts = {name: count_parameters(name, training) for name in models.unique()}
    return [counts[name] for name in models]
