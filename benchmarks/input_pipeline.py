"""The input pipeline: its share of a CPU training step (the figure a user sees), and, as
information, its rate against the course's loader and its gather-only bounds.

Every figure is a row of `pcamflow throughput` (`pcamflow.throughput.measure.bench_row`, its one
clock `timed_steps`), measured with the `throughput:` settings of `--config` (warm-up, timed steps,
`min_seconds`, workers): the same measurement as the command and the rule `throughput`, repeated.

  - input share: the time a training step waits for its input (gather, D4, uint8 -> float,
    normalisation, NHWC -> NCHW) over the step's time, for the config's CNN and MLP (their sizes
    and `channels_last`) at `--train-batch-size` on `--train-threads` threads (the training
    default: one), with the CPU accelerator on (`training.cpu_accelerator: auto`) and off (the
    torch ops). Goal: <= 10%.
  - pipeline (`data`) against the course's loader (`course`: H5 files opened once per worker and kept
    open, per-sample PIL transforms, in `--workers` worker processes) and the same loader reopening
    both files for every tile (`reopen`, torchvision's `PCAM`): the pipeline in `--threads` torch
    threads, so both use the same cores. The baselines' cost depends on the H5 layout, so they are
    also timed on a float32 copy of the first tiles (the course's copy of PCAM stored float32).
  - bounds, one thread: a plain uint8 gather of random tiles into a reused buffer, and that gather
    plus numpy's float32 NCHW conversion (no D4, no normalisation).

Figures are medians of `--repeats` rounds, each round taking every figure in turn, so a change in
the machine's load hits them alike; a ratio is the median of the rounds' ratios, with their range.
Uses the workflow's data (run `snakemake --cores 2 results/prepared/manifest.json` first).

    .venv/bin/python benchmarks/input_pipeline.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants
from pcamflow.config import load_yaml, validate_section, validate_training
from pcamflow.data.rawdata import labels_path, open_split
from pcamflow.errors import PcamflowError
from pcamflow.throughput.measure import BenchSpec, bench_row, train_split

RESULTS = Path("results")
COPY_TILES = 1024  # tiles copied into the float32 layout
SHARE_GOAL = 0.10  # input share of a CPU training step, at most
BASELINES = {"course": "course loader (files kept open)", "reopen": "reopen per tile"}
ACCELERATOR = ("auto", "off")  # training.cpu_accelerator
# the training settings of --config that shape a step: the models' sizes and the memory layout
STEP_SETTINGS = ("cnn_width", "mlp_hidden", "channels_last")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default="config/config.yaml", help="throughput settings, model sizes, channels_last"
    )
    parser.add_argument(
        "--raw-x", default=str(RESULTS / "data/synthetic" / constants.raw_filename("train", "x"))
    )
    parser.add_argument("--store", default=str(RESULTS / "prepared"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument(
        "--threads", type=int, default=2, help="pipeline (torch) threads against the baselines"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds (figures are medians)")
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--train-threads", type=int, help="default: training.threads of --config")
    for option in ("--warmup", "--steps", "--workers"):
        parser.add_argument(option, type=int, help="default: throughput settings of --config")
    parser.add_argument("--min-seconds", type=float, help="default: throughput settings of --config")
    args = parser.parse_args()
    try:
        measure(args)
    except PcamflowError as err:  # missing or malformed data: one line, not a traceback
        raise SystemExit(f"input_pipeline: error: {err}") from None


def measure(args: argparse.Namespace) -> None:
    config = load_yaml(args.config)
    given = {
        k: getattr(args, k)
        for k in ("warmup", "steps", "workers", "min_seconds")
        if getattr(args, k) is not None
    }
    timing = validate_section("throughput", {**config.get("throughput", {}), **given}, source=args.config)
    timing = {k: timing[k] for k in ("warmup", "steps", "workers", "min_seconds")}
    training = validate_training(config.get("training", {}), source=args.config)
    sizes = {key: training[key] for key in STEP_SETTINGS}
    threads = args.train_threads or training["threads"]
    print(
        f"every figure a `pcamflow throughput` row ({', '.join(f'{k} {v}' for k, v in timing.items())}); "
        f"img/s and shares: medians of {args.repeats} rounds"
    )
    train_shares(args, timing, sizes, threads)
    with tempfile.TemporaryDirectory(prefix="pcamflow-bench-") as tmp:
        layouts = _layouts(Path(args.raw_x), Path(tmp))
        print(
            f"pipeline: {args.threads} threads; baselines: {timing['workers']} DataLoader workers; bounds: 1 thread"
        )
        for batch_size in args.batch_sizes:
            report(batch_size, round_rates(args, timing, batch_size, layouts))


def train_shares(args: argparse.Namespace, timing: dict, sizes: dict, threads: int) -> None:
    """The input's share of a CPU training step, per model and accelerator setting."""
    shares, rates = defaultdict(list), defaultdict(list)
    for _ in range(args.repeats):
        for model in ("cnn", "mlp"):
            for accelerator in ACCELERATOR:
                spec = BenchSpec(
                    mode="train",
                    data=args.store,
                    model=model,
                    batch_size=args.train_batch_size,
                    threads=threads,
                    training={**sizes, "cpu_accelerator": accelerator},
                    **timing,
                )
                row = _measured(bench_row(spec), f"{model} training step")
                shares[model, accelerator].append(row["data_time_s"] / row["seconds"])
                rates[model, accelerator].append(row["img_per_s"])
    print(
        f"input share of a CPU training step, batch {args.train_batch_size}, {threads} thread(s), fp32, "
        f"channels_last {sizes['channels_last']}:"
    )
    for (model, accelerator), values in shares.items():
        share = statistics.median(values)
        print(
            f"    {model} ({', '.join(f'{k} {v}' for k, v in sizes.items() if k.startswith(model))}), "
            f"cpu_accelerator {accelerator:<4}: {100 * share:4.1f}% of the step "
            f"({statistics.median(rates[model, accelerator]):,.0f} img/s; goal <= {100 * SHARE_GOAL:.0f}%: "
            f"{'met' if share <= SHARE_GOAL else 'missed'})"
        )


def round_rates(
    args: argparse.Namespace, timing: dict, batch_size: int, layouts: dict[str, Path]
) -> dict[str, list[float]]:
    """img/s of every figure at one batch size, one value per round (`repeats` rounds of all of them)."""
    x = train_split(args.store).x
    rng = np.random.default_rng(0)
    common = {"batch_size": batch_size, "threads": args.threads, **timing}
    rates = defaultdict(list)
    for _ in range(args.repeats):
        rates["pipeline"].append(_rate(mode="data", data=args.store, **common))
        for layout, raw_x in layouts.items():
            for mode in BASELINES:
                rates[(mode, layout)].append(_rate(mode=mode, data=str(raw_x), **common))
        rates["gather"].append(gather_rate(x, batch_size, timing["min_seconds"], rng, to_float=False))
        rates["gather_float"].append(gather_rate(x, batch_size, timing["min_seconds"], rng, to_float=True))
    return rates


def report(batch_size: int, rounds: dict[str, list[float]]) -> None:
    """Median img/s of each figure; a ratio is the median of the rounds' ratios (a round's figures
    are taken within seconds of each other, so the machine's slower drift cancels), with their range."""
    rates = {key: statistics.median(values) for key, values in rounds.items()}
    pipeline = rates["pipeline"]
    print(f"batch {batch_size:>4}: pipeline {pipeline:>9,.0f}")
    print(
        f"            bounds: uint8 gather {rates['gather']:>9,.0f}; numpy gather + float NCHW "
        f"{rates['gather_float']:>9,.0f} (pipeline at {pipeline / rates['gather_float']:.2f}x the latter)"
    )
    for (mode, layout), rate in ((k, v) for k, v in rates.items() if isinstance(k, tuple)):
        ratios = [a / b for a, b in zip(rounds["pipeline"], rounds[(mode, layout)], strict=True)]
        print(
            f"            {BASELINES[mode]:<31} {rate:>9,.0f} ({layout}): pipeline "
            f"{statistics.median(ratios):.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}x)"
        )


def gather_rate(x: np.ndarray, batch_size: int, seconds: float, rng, *, to_float: bool) -> float:
    """img/s of a plain uint8 gather of random tiles into a reused buffer (one thread), for at least
    `seconds` (and 20 batches); with `to_float`, plus numpy's float32 NCHW conversion into a reused
    buffer (no D4, no normalisation)."""
    tiles = np.empty((batch_size, *x.shape[1:]), np.uint8)
    planes = np.empty((batch_size, x.shape[3], x.shape[1], x.shape[2]), np.float32)
    done = 0
    start = time.perf_counter()
    while done < 20 or time.perf_counter() - start < seconds:
        np.take(x, rng.integers(0, len(x), batch_size), axis=0, out=tiles, mode="clip")
        if to_float:
            planes[...] = tiles.transpose(0, 3, 1, 2)
        done += 1
    return done * batch_size / (time.perf_counter() - start)


def _rate(**spec) -> float:
    return _measured(bench_row(BenchSpec(**spec)), f"{spec['mode']} batch {spec['batch_size']}")["img_per_s"]


def _measured(row: dict, what: str) -> dict:
    """The row; exit with one line when it holds no numbers (status oom, error or skipped)."""
    if row["status"] != "ok":
        raise SystemExit(f"{what}: {row['status']}: {row['message']}")
    return row


def _layouts(raw_x: Path, tmp: Path) -> dict[str, Path]:
    """The workflow's raw file as it is, plus an uncompressed float32 copy of its first tiles."""
    with open_split(raw_x, labels_path(raw_x)) as raw:
        compression = f"{raw.x.compression} chunks {raw.x.chunks}" if raw.x.compression else "uncompressed"
        layouts = {f"workflow raw file, {raw.x.dtype} {compression}": raw_x}
        tiles, labels = raw.x[:COPY_TILES], raw.labels[:COPY_TILES]
    copy_x = tmp / "copy_float32_x.h5"
    with h5py.File(copy_x, "w") as fx, h5py.File(labels_path(copy_x), "w") as fy:
        fx.create_dataset(constants.X_KEY, data=tiles.astype(np.float32))
        fy.create_dataset(constants.Y_KEY, data=labels)
    layouts[f"float32 uncompressed copy, {len(tiles)} tiles"] = copy_x
    return layouts


if __name__ == "__main__":
    main()
