"""Input pipeline vs the course template's loader, and the input share of a CNN training step.

Goals (issue 3, on a 2-core machine): the pipeline delivers >= 30x the naive loader's img/s at the
same batch size and worker count, and input time is <= 10% of a CNN training epoch.

Uses the workflow's own data (run `snakemake --cores 2 results/prepared/manifest.json` first):
the raw train file (for `naive`) and the prepared store (for `data` and `train`). "Same worker
count": the naive loader gets `--workers` DataLoader worker processes, the pipeline as many torch
threads (`--threads`, the CPUs its compiled transform shares a batch over); both use the same cores.
The naive loader's cost depends on the H5 layout, so it is also timed on a float32 copy of the
first tiles (the course's copy of PCAM stored float32). Every figure comes from
`pcamflow.throughput.measure.bench_row`, the function behind `pcamflow bench`, and is the median of
`--repeats` measurements (wall-clock img/s; a shared VM's figures jump by 20% between runs).

    .venv/bin/python benchmarks/input_pipeline.py
    .venv/bin/python benchmarks/input_pipeline.py --batch-sizes 1 8 32 128 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants
from pcamflow.data.rawdata import labels_path, open_split
from pcamflow.errors import PcamflowError
from pcamflow.throughput.measure import BenchSpec, bench_row

RESULTS = Path("results")
COPY_TILES = 1024  # tiles copied into the float32 layout
GOAL = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw-x", default=str(RESULTS / "data/synthetic" / constants.raw_filename("train", "x"))
    )
    parser.add_argument("--store", default=str(RESULTS / "prepared"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=2, help="naive loader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="pipeline (torch) threads")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per figure (median)")
    parser.add_argument("--data-images", type=int, default=4000, help="images per pipeline measurement")
    parser.add_argument("--naive-steps", type=int, default=20, help="timed batches per naive measurement")
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
        print(f"pipeline: {args.threads} threads; naive: {args.workers} workers; median of {args.repeats}")
        for batch_size in args.batch_sizes:
            data = _median(
                args.repeats,
                mode="data",
                data=args.store,
                batch_size=batch_size,
                threads=args.threads,
                warmup=5,
                steps=max(20, args.data_images // batch_size),
            )
            print(f"batch {batch_size:>4}: pipeline {data:>9,.0f} img/s")
            for layout, raw_x in layouts.items():
                naive = _median(
                    args.repeats,
                    mode="naive",
                    data=str(raw_x),
                    batch_size=batch_size,
                    workers=args.workers,
                    threads=args.threads,
                    warmup=2,
                    steps=args.naive_steps,
                )
                ratio = data / naive
                verdict = "meets" if ratio >= GOAL else "misses"
                print(
                    f"            naive {naive:>9,.0f} img/s ({layout}): {ratio:.1f}x, {verdict} {GOAL:.0f}x"
                )

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


def _median(repeats: int, **spec) -> float:
    rows = [bench_row(BenchSpec(**spec)) for _ in range(repeats)]
    for row in rows:
        _measured(row, f"{spec['mode']} batch {spec['batch_size']}")
    return statistics.median(row["img_per_s"] for row in rows)


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
