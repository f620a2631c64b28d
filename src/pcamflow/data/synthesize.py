"""Embedded synthetic PCAM: H&E-like tiles in PCAM's own file format, a pure function of a seed.

The tiles are drawn by pcamflow.data.synth_tiles (what they hold and why: see there); the poisoned
course-style copy's faults are planted by pcamflow.data.synth_faults. This module writes the files:
the six H5 files, the meta CSVs and planted.json.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pcamflow.config import validate_section
from pcamflow.constants import (
    PLANTED_FILE,
    SPLITS,
    TILE_SHAPE,
    X_KEY,
    Y_KEY,
    Y_SHAPE,
    meta_filename,
    raw_filename,
)
from pcamflow.data.synth_faults import clean_record, plan_poison, poison_block
from pcamflow.data.synth_tiles import SynthBlock, generate_split
from pcamflow.errors import PcamflowError, check_output_dir, refuse_to_replace
from pcamflow.io import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

META_COLUMNS = ["coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi", "centre"]


Tile = tuple[np.ndarray, int, pd.Series]  # one tile's x, y and meta row


def _write_split(
    out_dir: Path,
    seed: int,
    split: str,
    n: int,
    record: dict,
    workers: int,
    keep=(),
    replace: dict[int, Tile] | None = None,
) -> dict[int, Tile]:
    """Write one split's x/y H5 files and meta CSV, block by block.

    replace: tiles written instead of the generated ones (planted duplicates); keep: indices of
    clean tiles to hand back (the test tiles that train copies). Copies of a tile of the same split
    (the record's within_split_duplicates) are made on the way: each comes after its original."""
    copy_of = {d["index"]: d["copy_of"] for d in record["within_split_duplicates"] if d["split"] == split}
    keep = set(keep) | set(copy_of.values())
    replace = dict(replace or {})
    poison = record["poison"]
    kept, meta_parts = {}, []
    with (
        atomic_path(out_dir / raw_filename(split, "x")) as x_tmp,
        atomic_path(out_dir / raw_filename(split, "y")) as y_tmp,
        h5py.File(x_tmp, "w") as fx,
        h5py.File(y_tmp, "w") as fy,
    ):
        # uncompressed and contiguous like PCAM's files (so a float32 course copy is 4x the size)
        dx = fx.create_dataset(X_KEY, (n, *TILE_SHAPE), np.float32 if poison else np.uint8)
        dy = fy.create_dataset(Y_KEY, (n, *Y_SHAPE), np.uint8)
        for start, block in generate_split(seed, split, n, workers):
            meta = _meta_frame(block, split)
            stop = start + len(block.y)
            for i in range(start, stop):
                if i in copy_of:
                    replace[i] = kept[copy_of[i]]
                if i in replace:
                    block.x[i - start], block.y[i - start], meta.iloc[i - start] = replace[i]
                if i in keep:
                    kept[i] = (block.x[i - start].copy(), block.y[i - start], meta.iloc[i - start].copy())
            dx[start:stop] = (
                poison_block(block.x, start, record["splits"][split], seed, split, record["dark"][split])
                if poison
                else block.x
            )
            dy[start:stop] = block.y.reshape(-1, *Y_SHAPE)
            meta_parts.append(meta)
    write_csv(out_dir / meta_filename(split), pd.concat(meta_parts, ignore_index=True))
    return kept


def _meta_frame(block: SynthBlock, split: str) -> pd.DataFrame:
    """PCAM's meta columns plus the scanning centre, one row per tile."""
    return pd.DataFrame(
        {
            "coord_y": block.coord[:, 0],
            "coord_x": block.coord[:, 1],
            "tumor_patch": block.tumour.any(axis=(1, 2)),
            "center_tumor_patch": block.y.astype(bool),
            "wsi": [f"synthetic_{split}_{w:03d}" for w in block.wsi],
            "centre": block.centre,
        },
        columns=META_COLUMNS,
    )


def write_synthetic(
    out_dir: str | os.PathLike,
    *,
    n_train: int,
    n_valid: int,
    n_test: int,
    seed: int,
    poison: bool,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Write the six PCAM-format H5 files, three meta CSVs and planted.json into out_dir.

    workers: processes rendering blocks (the files are the same for any number).
    overwrite: replace such files already in out_dir (else they are refused: they may be real data).
    Returns the planted record (what planted.json holds)."""
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    # the `synthetic:` schema checks what a config would (the CLI and library calls skip the config)
    settings = {f"n_{split}": n for split, n in sizes.items()} | {"seed": seed, "poison": poison}
    validate_section("synthetic", settings, source="synth")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PcamflowError(f"synth workers: must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir)
    if not overwrite:
        refuse_to_replace(out_dir, synthetic_files(), "PCAM-named files", "pcamflow synth --overwrite")
    record = plan_poison(seed, sizes) if poison else clean_record(seed)
    duplicates = record["cross_split_duplicates"]
    started = time.perf_counter()
    # test first: train's planted duplicates are copies of test tiles
    keep = {d["index_b"] for d in duplicates}
    test_tiles = _write_split(out_dir, seed, "test", n_test, record, workers, keep=keep)
    _write_split(out_dir, seed, "valid", n_valid, record, workers)
    copies = {d["index_a"]: test_tiles[d["index_b"]] for d in duplicates}
    _write_split(out_dir, seed, "train", n_train, record, workers, replace=copies)
    write_json(out_dir / PLANTED_FILE, record)
    kind = "poisoned" if poison else "clean"
    log.info("synthetic PCAM (%s) written to %s in %.1f s", kind, out_dir, time.perf_counter() - started)
    return record


def synthetic_files() -> list[str]:
    """Names of every file write_synthetic writes."""
    names = [raw_filename(s, k) for s in SPLITS for k in ("x", "y")]
    return names + [meta_filename(s) for s in SPLITS] + [PLANTED_FILE]


def cli_main(args) -> int:
    """`pcamflow synth`: write the synthetic dataset to --out (sizes and seed default to the schema's)."""
    given = {key: getattr(args, key) for key in ("n_train", "n_valid", "n_test", "seed")}
    settings = validate_section(
        "synthetic", {k: v for k, v in given.items() if v is not None}, source="pcamflow synth"
    )
    sizes = {key: settings[key] for key in given}
    check_output_dir(args.out)
    record = write_synthetic(
        args.out,
        **sizes,
        poison=args.poison,
        workers=args.workers,
        overwrite=getattr(args, "overwrite", False),
    )
    faulty = sum(len(tiles) for split in record["splits"].values() for tiles in split.values())
    duplicates = len(record["cross_split_duplicates"]) + len(record["within_split_duplicates"])
    dark = sum(len(tiles) for tiles in record["dark"].values())
    print(
        f"wrote synthetic PCAM to {args.out} ({faulty} faulty tiles, {duplicates} planted duplicates, "
        f"{dark} dark tiles)"
    )
    return 0
