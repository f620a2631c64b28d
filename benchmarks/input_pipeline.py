"""Input pipeline vs the course's loader (two baselines), its gather-only bound, and the input share
of a CNN training step.

Goals (issues 3 and 13, on a 2-core machine): the pipeline (gather, D4, uint8 -> float, normalise,
NCHW) delivers >= 30x the course loader's img/s at the same batch size and cores, and input time is
<= 10% of a CNN training step.

Uses the workflow's own data (run `snakemake --cores 2 results/prepared/manifest.json` first): the
raw train file (for the baselines) and the prepared store (for the pipeline and the bounds).
  - course loader (`naive`): the course's own DataLoader, H5 files opened once per worker and kept
    open, per-sample PIL transforms, in `--workers` worker processes;
  - reopen (`reopen`): the same loader reopening both H5 files for every tile (torchvision's `PCAM`);
  - pipeline (`data`): `pcamflow.data.pipeline` as training runs it, in `--threads` torch threads;
  - bounds, one thread: a plain uint8 gather of random tiles (`np.take` into a reused buffer), and
    that gather plus a float32 NCHW conversion in numpy (no D4, no normalisation).
"Same cores": the baselines' worker processes and the pipeline's threads use the same cores. The
baselines' cost depends on the H5 layout, so they are also timed on a float32 copy of the first
tiles (the course's copy of PCAM stored float32). Figures are medians of `--repeats` measurements,
taken in turns (pipeline, baselines, bounds, then again), so a change in the machine's load hits
them alike; on a shared machine single figures jump by 20% or more. A ratio to a baseline is the
median of the rounds' ratios, with their range.

    .venv/bin/python benchmarks/input_pipeline.py --repeats 5
    .venv/bin/python benchmarks/input_pipeline.py --batch-sizes 1 8 32 128 --repeats 7
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
from pcamflow.data.rawdata import labels_path, open_split
from pcamflow.errors import PcamflowError
from pcamflow.throughput.measure import BenchSpec, bench_row, train_split

RESULTS = Path("results")
COPY_TILES = 1024  # tiles copied into the float32 layout
GOAL = 30.0  # x the course loader
MIN_NAIVE_STEPS = 20  # timed batches per baseline measurement, at the least
BASELINES = {"naive": "course loader (files kept open)", "reopen": "reopen per tile"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw-x", default=str(RESULTS / "data/synthetic" / constants.raw_filename("train", "x"))
    )
    parser.add_argument("--store", default=str(RESULTS / "prepared"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="pipeline (torch) threads")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per figure (median)")
    parser.add_argument(
        "--data-images",
        type=int,
        default=16000,
        help="images per pipeline measurement (a measurement of 0.1 s or less jumps with the machine)",
    )
    parser.add_argument(
        "--naive-images",
        type=int,
        default=1000,
        help=f"images per baseline measurement (at least {MIN_NAIVE_STEPS} batches)",
    )
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=30, help="timed CNN training steps")
    args = parser.parse_args()
    try:
        measure(args)
    except PcamflowError as err:  # missing or malformed data: one line, not a traceback
        raise SystemExit(f"input_pipeline: error: {err}") from None


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pcamflow-bench-") as tmp:
        layouts = _layouts(Path(args.raw_x), Path(tmp))
        print(
            f"pipeline: {args.threads} threads; baselines: {args.workers} DataLoader workers; "
            f"bounds: 1 thread; img/s, median of {args.repeats} (all figures taken in turns)"
        )
        for batch_size in args.batch_sizes:
            report(batch_size, round_rates(args, batch_size, layouts))
    train_share(args)


def round_rates(
    args: argparse.Namespace, batch_size: int, layouts: dict[str, Path]
) -> dict[str, list[float]]:
    """img/s of every figure at one batch size, one value per round (`repeats` rounds of all of them)."""
    x = train_split(args.store).x
    rng = np.random.default_rng(0)
    rates = defaultdict(list)
    for _ in range(args.repeats):
        rates["pipeline"].append(
            _rate(
                mode="data",
                data=args.store,
                batch_size=batch_size,
                threads=args.threads,
                warmup=5,
                steps=max(20, args.data_images // batch_size),
            )
        )
        for layout, raw_x in layouts.items():
            for mode in BASELINES:
                rates[(mode, layout)].append(
                    _rate(
                        mode=mode,
                        data=str(raw_x),
                        batch_size=batch_size,
                        workers=args.workers,
                        threads=args.threads,
                        warmup=2,
                        steps=max(MIN_NAIVE_STEPS, args.naive_images // batch_size),
                    )
                )
        rates["gather"].append(gather_rate(x, batch_size, args.data_images, rng, to_float=False))
        rates["gather_float"].append(gather_rate(x, batch_size, args.data_images, rng, to_float=True))
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
        ratio = statistics.median(ratios)
        verdict = f", {'meets' if ratio >= GOAL else 'misses'} {GOAL:.0f}x" if mode == "naive" else ""
        print(
            f"            {BASELINES[mode]:<31} {rate:>9,.0f} ({layout}): pipeline {ratio:.1f}x "
            f"(rounds {min(ratios):.1f}-{max(ratios):.1f}x){verdict}"
        )


def gather_rate(x: np.ndarray, batch_size: int, images: int, rng, *, to_float: bool) -> float:
    """img/s of a plain uint8 gather of random tiles into a reused buffer (one thread); with
    `to_float`, plus numpy's float32 NCHW conversion into a reused buffer (no D4, no normalisation)."""
    batches = rng.integers(0, len(x), (max(1, images // batch_size), batch_size))
    tiles = np.empty((batch_size, *x.shape[1:]), np.uint8)
    planes = np.empty((batch_size, x.shape[3], x.shape[1], x.shape[2]), np.float32)
    start = time.perf_counter()
    for idx in batches:
        np.take(x, idx, axis=0, out=tiles, mode="clip")
        if to_float:
            planes[...] = tiles.transpose(0, 3, 1, 2)
    return batches.size / (time.perf_counter() - start)


def train_share(args: argparse.Namespace) -> None:
    train = bench_row(
        BenchSpec(
            mode="train",
            data=args.store,
            model="cnn",
            batch_size=args.train_batch_size,
            threads=args.threads,
            warmup=3,
            steps=args.train_steps,
        )
    )
    _measured(train, f"CNN training step, batch {args.train_batch_size}")
    share = train["data_time_s"] / train["seconds"]
    print(
        f"CNN training step, batch {args.train_batch_size}, fp32: {train['img_per_s']:,.0f} img/s; "
        f"input {train['data_time_s']:.3f} s of {train['seconds']:.2f} s = {100 * share:.1f}% (goal <= 10%)"
    )


def _rate(**spec) -> float:
    row = bench_row(BenchSpec(**spec))
    _measured(row, f"{spec['mode']} batch {spec['batch_size']}")
    return row["img_per_s"]


def _measured(row: dict, what: str) -> None:
    """Exit with one line when a row holds no numbers (status oom, error or skipped)."""
    if row["status"] != "ok":
        raise SystemExit(f"{what}: {row['status']}: {row['message']}")


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
