"""Throughput of `pcamflow predict` with a CNN bundle: tiles/s from a PCAM H5 file and from a folder of PNGs.

    .venv/bin/python benchmarks/predict_speed.py [--tiles 2048] [--pngs 512] [--threads 1] [--batch-size 256]

Builds a bundle of the default CNN (untrained: speed does not depend on the weights), writes
synthetic tiles as one H5 file and as PNG files, and times `predict_inputs` on each (after a
warm-up), next to the model alone on tiles already in memory and to reading the inputs alone.
Reports wall time and this process's CPU time (`time.process_time`, all threads): on a shared
machine the wall time is inflated by other load, the CPU time much less.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from pcamflow.config import validate_config
from pcamflow.data.synth_tiles import generate_split
from pcamflow.deployment.drift import HistogramAccumulator, histogram_moments, make_reference
from pcamflow.deployment.export import load_bundle, write_bundle
from pcamflow.deployment.predict import expand_inputs, predict_inputs, predict_tiles, read_chunks
from pcamflow.training.models import build_model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def build(tmp: Path, n_tiles: int, n_pngs: int) -> tuple[Path, Path, Path, np.ndarray]:
    tiles = np.concatenate([b.x for _, b in generate_split(0, "test", n_tiles)])
    h5 = tmp / "camelyonpatch_level_2_split_test_x.h5"
    with h5py.File(h5, "w") as fh:
        fh.create_dataset("x", data=tiles, chunks=(64, 96, 96, 3))
    folder = tmp / "pngs"
    folder.mkdir()
    for i, tile in enumerate(tiles[:n_pngs]):
        Image.fromarray(tile).save(folder / f"tile{i:05d}.png")
    histogram = HistogramAccumulator()
    histogram.update(tiles)
    mean, std = histogram_moments(histogram.counts)
    config = validate_config({})
    write_bundle(
        tmp / "bundle",
        model=build_model("cnn", config["training"]),
        stats={"mean": mean.tolist(), "std": std.tolist()},
        threshold=0.5,
        reference=make_reference(histogram.counts, histogram.n_tiles, config["export"]["drift"]),
        card="benchmark bundle\n",
        metadata={"model": "cnn"},
    )
    return tmp / "bundle", h5, folder, tiles


def read_only(inputs, batch_size: int) -> int:
    return sum(
        len(c.index)
        for p in expand_inputs(inputs)
        for c in read_chunks(p, block_size=batch_size, resize=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=2048, help="tiles in the H5 file")
    parser.add_argument("--pngs", type=int, default=512, help="PNG files in the folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir, h5, folder, tiles = build(Path(tmp), args.tiles, args.pngs)
        bundle = load_bundle(bundle_dir)
        predict_tiles(bundle, tiles[:64], tta=args.tta)  # warm-up
        rows = []
        _, wall, cpu = timed(lambda: predict_tiles(bundle, tiles, tta=args.tta))
        rows.append(("model alone (tiles in memory)", len(tiles), wall, cpu))
        for name, inputs, n in (("H5 file", [h5], args.tiles), ("PNG folder", [folder], args.pngs)):
            _, wall, cpu = timed(lambda inputs=inputs: read_only(inputs, args.batch_size))
            rows.append((f"{name}: reading only", n, wall, cpu))
            result, wall, cpu = timed(
                lambda inputs=inputs: predict_inputs(bundle, inputs, batch_size=args.batch_size, tta=args.tta)
            )
            assert result.n_predicted == n
            rows.append((f"{name}: predict", n, wall, cpu))
    print(
        f"CNN bundle (width 16), torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}"
        f"{', TTA' if args.tta else ''}\n"
    )
    print("| what | tiles | wall s | CPU s | tiles/s (wall) | tiles/s per CPU-second |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, n, wall, cpu in rows:
        print(f"| {name} | {n} | {wall:.2f} | {cpu:.2f} | {n / wall:.0f} | {n / cpu:.0f} |")


if __name__ == "__main__":
    main()
