"""Input pipeline vs the course template's loader, and the input share of a CNN training step.

Goals (issue 3, on a 2-core machine): the pipeline delivers >= 30x the naive loader's img/s at the
same batch size and worker count, and input time is <= 10% of a CNN training epoch.

Uses the workflow's own data (run `snakemake --cores 2 results/prepared/manifest.json` first):
the raw train file (for `naive`) and the prepared store (for `data` and `train`). The naive
loader's cost depends on the H5 layout, so it is also timed on copies of the first tiles in the
two other layouts it meets: uncompressed uint8 (as real PCAM) and uncompressed float32 (the
course copy). Every figure comes from `pcamflow.bench.bench_row`, the function behind
`pcamflow bench`; wall-clock img/s is what `pcamflow bench` reports, CPU img/s (images / CPU
seconds of this process) is shown too because wall time on a shared machine is inflated by
other load. (With workers the naive loader's CPU time is spent in the workers, so CPU img/s is
shown for workers 0 only.)

    .venv/bin/python benchmarks/input_pipeline.py
    .venv/bin/python benchmarks/input_pipeline.py --steps 40 --train-steps 60
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants
from pcamflow.bench import BenchSpec, bench_row
from pcamflow.naive_loader import labels_path

RESULTS = Path("results")
COPY_TILES = 1024  # tiles copied into each extra layout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--raw-x", default=str(RESULTS / "data/synthetic" / constants.raw_filename("train", "x"))
    )
    parser.add_argument("--store", default=str(RESULTS / "prepared"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed batches of the input modes")
    parser.add_argument("--train-steps", type=int, default=30, help="timed CNN training steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable figures)")
    args = parser.parse_args()
    common = dict(batch_size=args.batch_size, warmup=args.warmup, steps=args.steps, threads=args.threads)

    data = bench_row(BenchSpec(mode="data", data=args.store, **common))
    print(f"pipeline (data mode), batch {args.batch_size}: {_rates(data)}")
    with tempfile.TemporaryDirectory(prefix="pcamflow-bench-") as tmp:
        for layout, raw_x in _layouts(Path(args.raw_x), Path(tmp)).items():
            for workers in args.workers:
                naive = bench_row(BenchSpec(mode="naive", data=str(raw_x), workers=workers, **common))
                ratio = data["img_per_s"] / naive["img_per_s"]
                print(
                    f"naive, {layout}, workers {workers}: {_rates(naive, cpu=workers == 0)}"
                    f" -> pipeline is {ratio:.1f}x (wall)"
                )

    train = bench_row(
        BenchSpec(mode="train", data=args.store, model="cnn", **dict(common, steps=args.train_steps))
    )
    share = train["data_time_s"] / train["seconds"]
    print(
        f"CNN training step, batch {args.batch_size}, fp32: {_rates(train)}; "
        f"input {train['data_time_s']:.2f} s of {train['seconds']:.2f} s = {100 * share:.1f}% (wall)"
    )


def _rates(row: dict, cpu: bool = True) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['message']}"
    text = f"{row['img_per_s']:.0f} img/s wall"
    if cpu:
        text += f", {row['images'] / row['cpu_seconds']:.0f} img/s CPU"
    return text


def _layouts(raw_x: Path, tmp: Path) -> dict[str, Path]:
    """The workflow's raw file as it is, plus uncompressed uint8 and float32 copies of its first tiles."""
    with h5py.File(raw_x, "r") as fx, h5py.File(labels_path(raw_x), "r") as fy:
        x = fx[constants.X_KEY]
        layout = (
            f"{x.dtype}, {x.compression or 'uncompressed'} chunks {x.chunks}" if x.chunks else f"{x.dtype}"
        )
        tiles, labels = x[:COPY_TILES], fy[constants.Y_KEY][:COPY_TILES]
    layouts = {f"workflow raw file ({layout})": raw_x}
    for dtype in (np.uint8, np.float32):
        name = f"copy_{np.dtype(dtype).name}"
        copy_x, copy_y = tmp / f"{name}_x.h5", tmp / f"{name}_y.h5"
        with h5py.File(copy_x, "w") as fx, h5py.File(copy_y, "w") as fy:
            fx.create_dataset(constants.X_KEY, data=tiles.astype(dtype))
            fy.create_dataset(constants.Y_KEY, data=labels)
        layouts[f"{np.dtype(dtype).name} uncompressed, {len(tiles)} tiles"] = copy_x
    return layouts


if __name__ == "__main__":
    main()
