"""The `pcamflow` command: one subcommand per library entry point; user errors exit 2 with one line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pcamflow.constants import COURSE_TRAIN_SIZE, FULL_SIZES, ZENODO_RECORD
from pcamflow.errors import PcamflowError, disk_full_line

# subcommand -> (module, function): imported only when that subcommand runs, so `pcamflow synth`
# does not pay for importing torch.
COMMANDS = {
    "synth": ("pcamflow.data.synthesize", "cli_main"),
    "audit": ("pcamflow.data.audit", "cli_main"),
    "prepare": ("pcamflow.data.prepare", "cli_main"),
    "train": ("pcamflow.training.train", "cli_main"),
    "throughput": ("pcamflow.throughput.measure", "cli_main"),
    "download": ("pcamflow.data.download", "cli_main"),
    "cost": ("pcamflow.throughput.cost", "cli_main"),
    "predict": ("pcamflow.deployment.predict", "cli_main"),
    "status": ("pcamflow.evaluation.status", "cli_main"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcamflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _PARSERS.values():
        add(sub)
    return parser


def _synth(sub):
    p = sub.add_parser("synth", help="write synthetic PCAM-format H5 files")
    p.add_argument("--out", required=True, help="directory for the six .h5 files and meta CSVs")
    for option in ("--n-train", "--n-valid", "--n-test", "--seed"):
        p.add_argument(option, type=int, help="default: the config schema's `synthetic:` default")
    p.add_argument("--poison", action="store_true", help="course-style float32 copy with planted faults")
    p.add_argument(
        "--workers", type=int, default=1, help="processes rendering tiles (same files for any number)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace PCAM-named files already in --out")


def _audit(sub):
    p = sub.add_parser("audit", help="audit one split of raw PCAM H5 files")
    p.add_argument("--x", required=True, help="the split's _x.h5 file")
    p.add_argument("--y", required=True, help="the split's _y.h5 file")
    p.add_argument("--out", required=True, help="audit JSON to write")
    p.add_argument("--plot", help="PNG to write (intensity histogram, class balance, fault counts)")
    p.add_argument("--hashes", help=".npy of per-tile hashes to write (for cross-split duplicates)")
    p.add_argument("--block-size", type=int, help="tiles read per block (default: config schema's)")
    p.add_argument("--black-max", type=int, help="a tile whose every value is at most this is black")
    p.add_argument("--white-min", type=int, help="a tile whose every value is at least this is white")


def _prepare(sub):
    p = sub.add_parser("prepare", help="write the clean uint8 store from raw PCAM H5 files")
    p.add_argument("--raw-dir", required=True, help="directory holding the six PCAM .h5 files")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a store already in --out")
    p.add_argument("--audit-dir", help="audits ({split}.json, cross_split.json); computed here when absent")
    p.add_argument("--block-size", type=int, help="tiles read per block (default: config schema's)")
    p.add_argument(
        "--drop-black-white-from",
        help="comma-separated splits to drop black/white tiles from (default: train)",
    )
    p.add_argument(
        "--keep-cross-split-duplicates",
        action="store_true",
        help="keep train tiles that also occur in valid/test",
    )
    p.add_argument(
        "--drop-duplicates-from",
        help="comma-separated splits to drop repeated copies of a tile from, keeping the first (default: train)",
    )


def _train(sub):
    p = sub.add_parser(
        "train",
        help="run one training run outside Snakemake",
        description="Train one run config {data, model, lr, batch_size, optimizer, seed, training}. "
        "A run that finds a checkpoint in its state directory resumes from it; on SIGTERM/SIGUSR1/Ctrl-C "
        "it checkpoints and exits 75.",
    )
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--state-dir", help="where resume checkpoints live (default: OUT/state)")
    p.add_argument("--overwrite", action="store_true", help="train again over a finished run in --out")
    p.add_argument(
        "--live-dir", help="write TensorBoard scalars here while training (tensorboard --logdir watches it)"
    )


def _bench(sub):
    p = sub.add_parser("throughput", help="measure img/s of one configuration and append a CSV row")
    p.add_argument("--mode", required=True, choices=["data", "course", "reopen", "forward", "train"])
    p.add_argument(
        "--data", required=True, help="prepared store (course, reopen: a raw _x.h5 with its _y.h5 beside it)"
    )
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    for option in ("--workers", "--warmup", "--steps"):
        p.add_argument(option, type=int, help="default: the config schema's `throughput:` default")
    p.add_argument(
        "--min-seconds",
        type=float,
        help="least seconds of warm-up and of timed steps (default: the schema's)",
    )
    p.add_argument("--out", required=True, help="CSV to append a row to")
    p.add_argument("--partition", default="", help="label written in the row's partition column")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def _download(sub):
    p = sub.add_parser("download", help="download and verify the real PCAM files missing from --data-dir")
    p.add_argument(
        "--data-dir", required=True, help="directory for the six .h5 files (present ones are kept)"
    )
    p.add_argument("--base-url", help=f"where the .gz files live (default: Zenodo record {ZENODO_RECORD})")
    p.add_argument("--retries", type=int, help="resumed attempts per file after an interruption")
    p.add_argument("--meta", action="store_true", help="also fetch the meta CSVs (best effort, no md5)")


def _cost(sub):
    p = sub.add_parser("cost", help="estimate runs, GPU-hours and SBU of a config on Snellius")
    p.add_argument("--config", required=True, help="workflow config YAML (e.g. config/pcam.yaml)")
    p.add_argument(
        "--train-tiles",
        type=int,
        help=f"training tiles per epoch (default: full PCAM's {FULL_SIZES['train']}; "
        f"the course subset has {COURSE_TRAIN_SIZE})",
    )


def _predict(sub):
    p = sub.add_parser(
        "predict",
        help="predict tiles with an exported model bundle",
        epilog="Exit status: 0 all inputs predicted, 1 some inputs skipped (listed in the CSV), 2 error.",
    )
    p.add_argument("--model", required=True, help="bundle directory (results/bundle/model)")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="PCAM _x.h5 files, folders of PNG/TIFF tiles, or image files",
    )
    p.add_argument("--out", required=True, help="CSV to write: one row per tile")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average over the 8 D4 flips and rotations (default: as when the bundle's threshold was chosen)",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass")
    p.add_argument(
        "--resize",
        action="store_true",
        help="convert images that are not 96 x 96 RGB instead of refusing them",
    )


def _status(sub):
    p = sub.add_parser(
        "status",
        help="where a sweep stands: each run done, running, failed or pending",
        description="Read-only (no Snakemake lock): safe beside a running workflow. Run it from the "
        "repository root with the config files and overrides you gave snakemake.",
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="config file layered over config/config.yaml, as snakemake --configfile (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="an override as snakemake --config KEY=VALUE, e.g. --set experiment=pcam (repeatable)",
    )


_PARSERS = {
    "synth": _synth,
    "audit": _audit,
    "prepare": _prepare,
    "train": _train,
    "throughput": _bench,
    "download": _download,
    "cost": _cost,
    "predict": _predict,
    "status": _status,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    module_name, func = COMMANDS[args.command]
    try:
        handler = getattr(importlib.import_module(module_name), func)
        return int(handler(args) or 0)
    except PcamflowError as err:
        print(f"pcamflow: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if disk_full_line(err) is None:
            raise
        print(f"pcamflow: error: {disk_full_line(err)}", file=sys.stderr)  # no partial file is left
        return 1
    except KeyboardInterrupt:
        print("pcamflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
