"""Prepare: the clean uint8 store (layout in `pcamflow.data.store`) from raw PCAM files and their audits.

Each split is streamed in blocks, cleaned by `rawdata.clean_tiles`, filtered (black/white tiles
and every copy but the first of a tile repeated within the split, from the splits the config names;
train tiles that also occur in valid or test) and appended to its .npy file. Labels of kept tiles are copied as they are. The store is written into a
temporary directory beside the output and moved in only when complete (manifest last), so a
failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pcamflow import constants
from pcamflow.config import validate_section
from pcamflow.data.audit import CHANNELS, audit_split, cross_split_duplicates
from pcamflow.data.rawdata import (
    RawTiles,
    channel_histograms,
    clean_tiles,
    histogram_moments,
    open_split,
    open_tiles,
    split_paths,
)
from pcamflow.data.store import MANIFEST_FILE, STATS_FILE, array_path, combined_checksum, store_files
from pcamflow.errors import PcamflowError, check_output_dir, refuse_to_replace
from pcamflow.io import StreamWriter, read_json, sha256sum, write_json

log = logging.getLogger(__name__)

DROP_REASONS = ("black", "white", "cross_split_duplicate", "within_split_duplicate")


@dataclass
class SplitPlan:
    """What prepare keeps of one split: a mask over raw rows, and why each dropped row goes."""

    n_raw: int
    keep: np.ndarray  # (N,) bool
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> tiles


def prepare_store(
    raw: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    audits: dict[str, dict],
    cross: dict,
    drop_black_white_from: list[str],
    drop_cross_split_duplicates: bool,
    drop_duplicates_from: Sequence[str] = (),
    block_size: int,
) -> dict:
    """Write the store for raw = {split: (x_path, y_path)}; return its stats.json content."""
    out_dir = Path(out_dir)
    plans = {
        split: plan_split(
            split,
            audits[split],
            cross,
            drop_black_white_from,
            drop_cross_split_duplicates,
            drop_duplicates_from,
        )
        for split in raw
    }
    if "train" not in raw:
        raise PcamflowError("prepare: no train split given; the channel statistics come from train only")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        digests = {}
        for split, (x_path, y_path) in raw.items():
            split_digests, dropped = _write_split(
                split,
                x_path,
                y_path,
                tmp,
                plans[split],
                audits[split],
                block_size,
                count_dropped=split == "train",
            )
            digests.update(split_digests)
            if split == "train":
                histogram = _kept_histogram(audits[split], dropped)
        settings = {
            "drop_black_white_from": list(drop_black_white_from),
            "drop_cross_split_duplicates": drop_cross_split_duplicates,
            "drop_duplicates_from": list(drop_duplicates_from),
        }
        stats = _stats(histogram, plans, settings)
        write_json(tmp / STATS_FILE, stats)
        digests[STATS_FILE] = sha256sum(tmp / STATS_FILE)
        write_json(tmp / MANIFEST_FILE, _manifest(digests, audits))
        _move_into(tmp, out_dir, [*digests, MANIFEST_FILE])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def plan_split(
    split: str,
    audit: dict,
    cross: dict,
    drop_black_white_from: Sequence[str],
    drop_cross_split_duplicates: bool,
    drop_duplicates_from: Sequence[str] = (),
) -> SplitPlan:
    """Which rows of a split to keep: black/white dropped where configured, train leaks if configured,
    and where configured every copy of a tile repeated within the split but its first."""
    n = audit["n_tiles"]
    keep = np.ones(n, dtype=bool)
    reasons = {}
    if split in drop_black_white_from:
        reasons["black"] = audit["faults"]["black"]["indices"]
        reasons["white"] = audit["faults"]["white"]["indices"]
    if drop_cross_split_duplicates and split == "train":
        # only train loses tiles: valid/test stay as published, so results compare with others'.
        reasons["cross_split_duplicate"] = [p["index_a"] for p in cross["pairs"] if p["split_a"] == "train"]
    if split in drop_duplicates_from:
        reasons["within_split_duplicate"] = [
            i for group in audit["duplicates"]["groups"] for i in sorted(group)[1:]
        ]
    dropped = {}
    for reason in DROP_REASONS:
        rows = np.asarray(reasons.get(reason, []), dtype=np.int64)
        dropped[reason] = int(keep[rows].sum())  # a row dropped for an earlier reason counts there
        keep[rows] = False
    if not keep.any():
        raise PcamflowError(f"prepare: every tile of split '{split}' would be dropped; nothing left to write")
    return SplitPlan(n_raw=n, keep=keep, dropped=dropped)


class NpyStreamWriter:
    """Append blocks to a .npy file of known shape, hashing the bytes as they go (io.StreamWriter:
    memory stays at two buffers however large the split; the writes skip the page cache where the
    file system allows)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.rows = 0
        self._out = StreamWriter(path, "sha256")
        self._out.write(_npy_header(shape, self.dtype))

    def write(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.shape[1:] or block.dtype != self.dtype:
            raise ValueError(f"block {block.dtype} {block.shape} does not fit {self.dtype} {self.shape}")
        self._out.write(np.ascontiguousarray(block).data)
        self.rows += len(block)

    def finish(self) -> str:
        """Close the file and return its sha256; every row the header promised must be written."""
        digest = self._out.finish()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path}: wrote {self.rows} rows, header says {self.shape[0]}")
        return digest

    def close(self) -> None:
        self._out.close()


# ---- command line ----


def cli_main(args) -> int:
    settings, audit_settings = _settings_from(args)
    check_output_dir(args.out, inputs=[args.raw_dir, *([args.audit_dir] if args.audit_dir else [])])
    if not args.overwrite:  # a store may be what finished runs were trained on
        names = [path.name for path in store_files(args.out, constants.SPLITS)]
        refuse_to_replace(args.out, names, "store files", "pcamflow prepare --overwrite")
    raw = {split: split_paths(args.raw_dir, split) for split in constants.SPLITS}
    audits, cross = _audits_for(raw, args.audit_dir, audit_settings)
    stats = prepare_store(
        raw, args.out, audits=audits, cross=cross, block_size=audit_settings["block_size"], **settings
    )
    kept = ", ".join(f"{s} {c['kept']}/{c['raw']}" for s, c in stats["counts"].items())
    print(f"{args.out}: prepared store written (kept {kept})")
    return 0


def _settings_from(args) -> tuple[dict, dict]:
    """The `prepare:` and `audit:` sections from the options given, checked by the schema like a config."""
    given = {}
    if args.drop_black_white_from is not None:
        given["drop_black_white_from"] = [s for s in args.drop_black_white_from.split(",") if s]
    if args.keep_cross_split_duplicates:
        given["drop_cross_split_duplicates"] = False
    if args.drop_duplicates_from is not None:
        given["drop_duplicates_from"] = [s for s in args.drop_duplicates_from.split(",") if s]
    audit_given = {"block_size": args.block_size} if args.block_size is not None else {}
    return (
        validate_section("prepare", given, source="pcamflow prepare"),
        validate_section("audit", audit_given, source="pcamflow prepare"),
    )


def _audits_for(raw: dict, audit_dir: str | None, settings: dict) -> tuple[dict, dict]:
    """Audits from audit_dir (as the workflow writes them), or computed here when not given."""
    if audit_dir:
        audit_dir = Path(audit_dir)
        paths = {s: audit_dir / constants.AUDIT_FILE.format(split=s) for s in raw}
        paths["cross"] = audit_dir / constants.CROSS_SPLIT_FILE
        for path in paths.values():
            if not path.exists():
                raise PcamflowError(f"{path}: audit missing (run `pcamflow audit`, or leave out --audit-dir)")
        audits = {s: read_json(paths[s]) for s in raw}
        for split, (x_path, _) in raw.items():
            _check_audit_is_of(audits[split], paths[split], x_path)
        return audits, read_json(paths["cross"])
    results = {s: audit_split(x, y, split=s, **settings) for s, (x, y) in raw.items()}
    audits = {s: r.report for s, r in results.items()}
    return audits, cross_split_duplicates({s: r.hashes for s, r in results.items()}, audits)


def _check_audit_is_of(audit: dict, audit_path: Path, x_path) -> None:
    """Refuse an audit that was made of another file than x_path (a stale or misplaced --audit-dir)."""
    with open_tiles(x_path) as raw:
        mismatch = _audit_mismatch(audit, raw)
    if mismatch:
        raise PcamflowError(f"{x_path}: {mismatch} ({audit_path}); rerun the audit or leave out --audit-dir")


def _audit_mismatch(audit: dict, raw: RawTiles) -> str | None:
    """How a raw x file differs from what its audit recorded of it (tiles, dtype, bytes); None if not."""
    if len(raw) != audit["n_tiles"]:
        return f"holds {len(raw)} tiles but its audit counts {audit['n_tiles']}"
    if str(raw.dtype) != audit["dtype"]["x"]:
        return f"is stored as {raw.dtype} but its audit records {audit['dtype']['x']}"
    size = raw.x_path.stat().st_size
    if size != audit["size"]["x_bytes"]:
        return f"has {size} bytes but its audit records {audit['size']['x_bytes']}"
    return None


# ---- helpers ----


def _write_split(
    split: str, x_path, y_path, tmp: Path, plan: SplitPlan, audit: dict, block_size: int, count_dropped: bool
) -> tuple[dict[str, str], np.ndarray | None]:
    """Stream one split into tmp; return sha256 per file written and, if count_dropped, the dropped
    tiles' channel histogram (the kept tiles' is the audit's less that: see _kept_histogram)."""
    dropped = np.zeros((3, 256), dtype=np.int64) if count_dropped else None
    with open_split(x_path, y_path) as raw:
        mismatch = _audit_mismatch(audit, raw)
        if mismatch:
            raise PcamflowError(f"{raw.x_path}: {mismatch}; rerun the audit")
        index = np.flatnonzero(plan.keep).astype(np.int64)
        x_file = array_path(tmp, split, "x")
        writer = NpyStreamWriter(x_file, (len(index), *constants.TILE_SHAPE), np.uint8)
        try:
            for start, block in raw.blocks(block_size, buffers=1):
                stop = start + len(block)
                cleaned, keep = clean_tiles(block, in_place=True), plan.keep[start:stop]
                del block
                for first, stop_run in _runs_of(keep):  # slices, not a block-sized copy of what is kept
                    writer.write(cleaned[first:stop_run])
                if dropped is not None and not keep.all():
                    dropped += channel_histograms(cleaned[~keep])
                log.info("prepare %s: %d/%d tiles read", split, stop, len(raw))
            x_digest = writer.finish()
        finally:
            writer.close()
        labels = raw.labels[index]
    digests = {x_file.name: x_digest}
    for name, array in (("y", labels), ("index", index)):
        path = array_path(tmp, split, name)
        np.save(path, array)
        digests[path.name] = sha256sum(path)
    return digests, dropped


def _runs_of(keep: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive True values in a 1-D bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _kept_histogram(audit: dict, dropped: np.ndarray) -> np.ndarray:
    """The kept tiles' channel histogram: the audit's, of every cleaned tile of the split, less the
    dropped tiles' (exact counts; counting the kept tiles again would cost a third of prepare's time)."""
    return np.array([audit["cleaned_histogram"][c] for c in CHANNELS], dtype=np.int64) - dropped


def _stats(histogram: np.ndarray, plans: dict, settings: dict) -> dict:
    """Per-channel mean/std on the [0, 1] scale from the exact value histogram of kept train tiles."""
    mean, std = histogram_moments(histogram)
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "scale": "value / 255",
        "computed_on": "kept train tiles",
        "pixels_per_channel": int(histogram[0].sum()),
        "counts": {
            split: {
                "raw": plan.n_raw,
                "kept": int(plan.keep.sum()),
                "dropped": plan.dropped,
                "dropped_total": plan.n_raw - int(plan.keep.sum()),
            }
            for split, plan in plans.items()
        },
        "settings": settings,
    }


def _manifest(digests: dict[str, str], audits: dict[str, dict]) -> dict:
    files = dict(sorted(digests.items()))
    return {
        "checksum": combined_checksum(files),
        "files": files,
        f"source_{constants.RAW_CHECKSUM}": {
            split: audit["files"][constants.RAW_CHECKSUM] for split, audit in audits.items()
        },
    }


def _move_into(tmp: Path, out_dir: Path, names: list[str]) -> None:
    """Move the finished files into out_dir; the manifest goes last and marks the store complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp / name, out_dir / name)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()
