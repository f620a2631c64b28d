"""The GPU table: training throughput of ResNet-18 and ResNet-50 on 96 px tiles, per input path.

For every model x precision (fp32, bf16, fp16) x batch size (256, 512), channels_last, one training
step (`pcamflow.training.step.train_step`, through `pcamflow.throughput.measure.bench_row`, the function behind
`pcamflow throughput`) is timed with each input path of `pcamflow.data.loader.BatchLoader`:
  - resident: the uint8 train split in GPU memory, a batch is one on-device gather;
  - host: a gather in host memory into pinned memory, prefetched and copied on a side stream.
Each row prints img/s, the peak GPU memory (the resident split included) and the input share of a
step (time waiting for the next batch and turning it into the model's input / step time). An
out-of-memory configuration is a row with status oom. The whole table takes under 10 minutes on
one A100/H100-class GPU.

    .venv/bin/python benchmarks/gpu_check.py                          # synthetic tiles, CUDA
    .venv/bin/python benchmarks/gpu_check.py --store results/prepared # a prepared store's train split
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny      # the table code on a CPU, seconds

Without --store, a store of --tiles random tiles is written to a temporary directory (the gather's
cost does not depend on what the tiles show). Exit status: 0 the table was printed (oom and
skipped rows included); 1 a configuration failed (its row says why); 2 a usage error;
69 (EX_UNAVAILABLE) no CUDA device: one line on stderr, nothing measured.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pcamflow import constants
from pcamflow.data.store import STATS_FILE, array_path
from pcamflow.io import write_json
from pcamflow.throughput.measure import BenchSpec, bench_row, invalid_reason, skipped_row

EXIT_NO_CUDA = 69  # sysexits EX_UNAVAILABLE
MODELS = ("resnet18", "resnet50")
PRECISIONS = ("fp32", "bf16", "fp16")
BATCH_SIZES = (256, 512)
INPUT_PATHS = {"resident": True, "host": False}  # table label -> training.device_resident
# --tiny: the small CNN instead of the ResNets, so the table code runs in seconds on a CPU
TINY = {"models": ("cnn",), "batch_sizes": (4,), "tiles": 16, "warmup": 1, "steps": 2}
COLUMNS = ("model", "precision", "batch", "input", "img/s", "peak MB", "input share", "status")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing measured",
            file=sys.stderr,
        )
        return EXIT_NO_CUDA
    with tempfile.TemporaryDirectory(prefix="pcamflow-gpu-check-") as tmp:
        store = args.store or write_random_store(Path(tmp), args.tiles)
        print(describe(args), flush=True)
        rows = []
        for spec in specs(args, str(store)):
            reason = invalid_reason(spec)
            row = skipped_row(spec, reason) if reason else bench_row(spec)
            row["input"] = input_label(spec)
            rows.append(row)
            print(format_row(table_row(row)), flush=True)
    print()
    print(format_table([table_row(r) for r in rows]))
    return 1 if any(r["status"] == "error" for r in rows) else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--store", help="a prepared store (default: random tiles in a temporary store)")
    parser.add_argument("--tiles", type=int, default=32768, help="tiles of the random store (0.9 GB)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (cuDNN picks its kernels)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the table code in seconds")
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


def specs(args: argparse.Namespace, store: str) -> list[BenchSpec]:
    """One training-step configuration per row, channels_last, the fastest (non-deterministic) kernels."""
    return [
        BenchSpec(
            mode="train",
            data=store,
            model=model,
            batch_size=batch_size,
            precision=precision,
            device=args.device,
            warmup=args.warmup,
            steps=args.steps,
            training={"channels_last": True, "deterministic": False, "device_resident": resident},
        )
        for model, precision, batch_size, resident in itertools.product(
            args.models, args.precisions, args.batch_sizes, INPUT_PATHS.values()
        )
    ]


def input_label(spec: BenchSpec) -> str:
    return next(
        label for label, resident in INPUT_PATHS.items() if spec.training["device_resident"] is resident
    )


def table_row(row: dict) -> dict:
    """A bench row -> the table's columns (numbers only for measured rows)."""
    measured = row["status"] == "ok"
    peak = row["peak_gpu_mem_mb"] if row["device"] == "cuda" else row["peak_rss_mb"]
    return {
        "model": row["model"],
        "precision": row["precision"],
        "batch": row["batch_size"],
        "input": row["input"],
        "img/s": _figure(row["img_per_s"]) if measured else "-",
        "peak MB": f"{peak:,.0f}" if measured and peak is not None else "-",
        "input share": f"{100 * row['data_time_s'] / row['seconds']:.1f}%" if measured else "-",
        "status": row["status"] if measured else f"{row['status']}: {row['message']}",
    }


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_row(cells: dict) -> str:
    return " | ".join(str(cells[c]) for c in COLUMNS)


def format_table(rows: list[dict]) -> str:
    """A Markdown table (it goes into the issue's note as it is)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + format_row(r) + " |" for r in rows]
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return (
        f"gpu_check on {device}, torch {torch.__version__}: 96 px tiles, channels_last, "
        f"{args.warmup} warm-up + {args.steps} timed steps per row; "
        "peak MB: GPU memory on cuda (the resident split included), process RSS on cpu"
    )


def write_random_store(store_dir: Path, tiles: int) -> Path:
    """The parts of a prepared store a training step reads: train x, y, index and stats."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(tiles, *constants.TILE_SHAPE), dtype=np.uint8)
    arrays = {"x": x, "y": (np.arange(tiles) % 2).astype(np.uint8), "index": np.arange(tiles, dtype=np.int64)}
    for name, array in arrays.items():
        np.save(array_path(store_dir, "train", name), array)
    scaled = x[: min(tiles, 1024)].reshape(-1, 3) / 255.0
    write_json(store_dir / STATS_FILE, {"mean": scaled.mean(0).tolist(), "std": scaled.std(0).tolist()})
    return store_dir


if __name__ == "__main__":
    sys.exit(main())
