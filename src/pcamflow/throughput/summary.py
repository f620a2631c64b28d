"""The throughput study's summary: every partition's `pcamflow throughput` rows merged, a bottleneck
verdict for each training row, and a scaling plot (img/s against batch size, log axes).

Bottleneck of a train row: our input pipeline is synchronous (the step waits while the next batch
is gathered and transformed), so a step is input-bound when getting its input takes longer than
its compute. Two measurements say this and agree in theory (train = B / (d + c), data-only = B / d,
so data-only < 2 x train  <=>  d > c  <=>  input share > 0.5):
  - `input_headroom`: data-only img/s at the same (partition, device, batch size) / train img/s;
    input-bound when it is below 2. Used when that data row exists.
  - `data_share`: the train row's own time waiting for input / its time; input-bound above 0.5.
    Used when there is no data-only row.

`speedup_vs_course` (data rows): the pipeline's img/s over the course's loader (mode `course`: H5
files opened once per worker and kept open) at the same (partition, device, batch size);
`speedup_vs_reopen` the same over the loader that reopens the files for every tile (mode `reopen`),
empty when it was not measured. The pipeline runs in the process's threads, the baselines in
`throughput.workers` worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_path, write_csv

log = logging.getLogger(__name__)

INPUT_BOUND = "input-bound"
COMPUTE_BOUND = "compute-bound"
HEADROOM_LIMIT = 2.0  # data-only img/s below this multiple of train img/s: input-bound
SHARE_LIMIT = 0.5  # train time spent waiting for input above this: input-bound
PAIR_KEYS = ["partition", "device", "batch_size"]
SPEEDUP_COLUMNS = {"speedup_vs_course": "course", "speedup_vs_reopen": "reopen"}  # column -> baseline mode


def read_throughput(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All partitions' rows in one table (partition labels kept as text)."""
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_csv(path, dtype={"partition": str, "model": str, "precision": str}))
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise PcamflowError(f"{path}: not a throughput CSV ({type(exc).__name__})") from None
    if not frames:
        raise PcamflowError("no throughput CSVs to merge (config 'partitions' is empty?)")
    return pd.concat(frames, ignore_index=True)


def add_bottleneck(rows: pd.DataFrame) -> pd.DataFrame:
    """Add data_share, input_headroom and bottleneck (set on measured train rows only), and
    the speedups over the two baselines (on measured data rows)."""
    out = rows.copy()
    for column in ("img_per_s", "seconds", "data_time_s"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    ok = out["status"] == "ok"
    train = ok & (out["mode"] == "train")
    data = ok & (out["mode"] == "data")
    data_rate = _paired_rate(out, data)
    for column, baseline in SPEEDUP_COLUMNS.items():
        baseline_rate = _paired_rate(out, ok & (out["mode"] == baseline))
        out[column] = (out["img_per_s"] / baseline_rate).where(data).round(1)
    out["data_share"] = (out["data_time_s"] / out["seconds"]).where(train).round(4)
    out["input_headroom"] = (data_rate / out["img_per_s"]).where(train).round(3)
    by_headroom = out["input_headroom"] < HEADROOM_LIMIT
    by_share = out["data_share"] > SHARE_LIMIT
    input_bound = by_headroom.where(out["input_headroom"].notna(), by_share)
    out["bottleneck"] = np.where(input_bound.astype(bool), INPUT_BOUND, COMPUTE_BOUND)
    out["bottleneck"] = out["bottleneck"].where(train, "")
    return out


def _paired_rate(rows: pd.DataFrame, measured: pd.Series) -> pd.Series:
    """For every row, the img/s of the `measured` row with its (partition, device, batch size); NaN if none."""
    rate = rows[measured].groupby(PAIR_KEYS)["img_per_s"].max()
    return pd.Series(
        [rate.get(tuple(key), np.nan) for key in rows[PAIR_KEYS].itertuples(index=False)], index=rows.index
    )


def plot_scaling(rows: pd.DataFrame, path: str | os.PathLike) -> None:
    """img/s against batch size (log-log): one panel per mode, one line per partition/model/precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    measured = rows[rows["status"] == "ok"]
    modes = [m for m in ("data", "course", "reopen", "forward", "train") if m in set(measured["mode"])]
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(4.5 * max(len(modes), 1), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for label, line in _lines(measured[measured["mode"] == mode]):
            ax.plot(line["batch_size"], line["img_per_s"], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(set(measured["batch_size"])))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(title=mode, xlabel="batch size", ylabel="images / s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if not modes:
        axes[0][0].text(0.5, 0.5, "no measured rows (all skipped or failed)", ha="center", va="center")
        axes[0][0].set_axis_off()
    notes = [f"not measured: {partition} ({why})" for partition, why in skipped_partitions(rows).items()]
    fig.tight_layout(rect=(0, min(0.3, 0.06 * len(notes)), 1, 1))
    for i, note in enumerate(notes):  # a partition the plot leaves out is named, with the reason
        fig.text(0.01, 0.01 + 0.04 * i, note, fontsize=8, color="tab:red")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def skipped_partitions(rows: pd.DataFrame) -> dict[str, str]:
    """Partition -> why it was not measured (e.g. a GPU partition on a machine without CUDA)."""
    skipped = rows.loc[rows["status"] == "skipped"]
    return {str(p): str(m) for p, m in skipped.groupby("partition")["message"].first().items()}


def summarise_throughput(paths: Iterable[str | os.PathLike], csv_path, plot_path) -> pd.DataFrame:
    """Merge, add the bottleneck columns, write the summary CSV and the scaling plot."""
    rows = add_bottleneck(read_throughput(paths))
    for partition, part in rows.groupby("partition", dropna=False):
        counts = ", ".join(f"{n} {status}" for status, n in part["status"].value_counts().items())
        log.info("partition %s: %s", partition, counts)
        for message in part.loc[part["status"] == "skipped", "message"].unique():
            log.warning("partition %s: not measured: %s", partition, message)
    write_csv(csv_path, rows)
    plot_scaling(rows, plot_path)
    return rows


def _lines(rows: pd.DataFrame):
    keys = ["partition", "model", "precision"]
    for values, line in rows.groupby(keys, sort=True, dropna=False):
        label = " ".join(str(v) for k, v in zip(keys, values) if str(v) not in ("-", "nan", ""))
        yield label or "(no partition)", line.sort_values("batch_size")
