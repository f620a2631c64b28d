"""Peak memory of `pcamflow prepare` on a course-style float32 train file of >= 2 GB (goal: <= 1 GB RSS).

Writes the raw PCAM files (train x float32, uncompressed, written in blocks so this script stays
small too), runs `pcamflow prepare` (which audits every split and writes the store) under
`/usr/bin/time -v`, prints max RSS, wall and CPU time, and deletes the files again.

    .venv/bin/python benchmarks/prepare_rss.py                 # 20,000 train tiles: 2.2 GB float32
    .venv/bin/python benchmarks/prepare_rss.py --n-train 2000  # a quick look
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from pcamflow import constants
from pcamflow.data.rawdata import TILE_VALUES

WRITE_BLOCK = 1000  # tiles generated and written at a time


def write_float32_split(raw_dir: Path, split: str, n: int, seed: int) -> None:
    """n random float32 tiles with a few NaN, outliers and black tiles; alternating labels."""
    rng = np.random.default_rng(seed)
    with h5py.File(raw_dir / constants.raw_filename(split, "x"), "w") as fx:
        x = fx.create_dataset(constants.X_KEY, (n, *constants.TILE_SHAPE), np.float32)
        for start in range(0, n, WRITE_BLOCK):
            block = rng.integers(0, 256, (min(WRITE_BLOCK, n - start), *constants.TILE_SHAPE), np.uint8)
            block = block.astype(np.float32)
            block[::97, 0, 0, 0] = np.nan
            block[1::89, 1, 1, 1] = 5000.0
            block[2::101] = 0.0
            x[start : start + len(block)] = block
    with h5py.File(raw_dir / constants.raw_filename(split, "y"), "w") as fy:
        fy.create_dataset(constants.Y_KEY, data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))


def run_measured(cmd: list[str]) -> dict[str, str]:
    """Run cmd under GNU time -v; return its report lines as {name: value}."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"prepare failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(re.findall(r"^\s*(.+?): (.+)$", proc.stderr, flags=re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-train", type=int, default=20_000, help="train tiles (20,000 float32 = 2.2 GB)")
    parser.add_argument("--n-other", type=int, default=1_000, help="valid and test tiles each")
    parser.add_argument("--block-size", type=int, help="prepare's block size (default: the config schema's)")
    parser.add_argument(
        "--dir",
        help="where to make the work directory (default: the system's temporary directory); "
        "only that fresh subdirectory is deleted afterwards",
    )
    args = parser.parse_args()

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    # a fresh subdirectory: the rmtree below must never reach files of the user's --dir
    work = Path(tempfile.mkdtemp(prefix="pcamflow-rss-", dir=args.dir))
    raw_dir = work / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, (split, n) in enumerate(
            {"train": args.n_train, "valid": args.n_other, "test": args.n_other}.items()
        ):
            write_float32_split(raw_dir, split, n, seed=i)
        train_x = raw_dir / constants.raw_filename("train", "x")
        cmd = [
            sys.executable,
            "-m",
            "pcamflow.cli",
            "prepare",
            "--raw-dir",
            str(raw_dir),
            "--out",
            str(work / "store"),
        ]
        if args.block_size is not None:
            cmd += ["--block-size", str(args.block_size)]
        report = run_measured(cmd)
        max_rss_kb = int(report["Maximum resident set size (kbytes)"])
        store_x = work / "store" / "train_x.npy"
        print(f"command: /usr/bin/time -v {' '.join(cmd)}")
        print(f"train x: {args.n_train} tiles float32, {train_x.stat().st_size / 1e9:.2f} GB on disk")
        print(
            f"store train_x.npy: {store_x.stat().st_size / 1e9:.2f} GB (uint8; {args.n_train * TILE_VALUES / 1e9:.2f} GB before drops)"
        )
        print(f"max RSS: {max_rss_kb / 1024:.0f} MiB ({max_rss_kb / 1024**2:.2f} GiB); goal <= 1 GB")
        print(f"wall: {report['Elapsed (wall clock) time (h:mm:ss or m:ss)']}")
        print(f"CPU: user {report['User time (seconds)']} s, system {report['System time (seconds)']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
