"""The data audit: what one split of raw PCAM files holds, streamed in blocks, and duplicates across splits.

Per split (`audit_split`): dtype and on-disk size with the reason for it, shapes, value range,
counts and indices of tiles with NaN, inf, out-of-range values, black and white tiles, class
balance, duplicate tiles within the split, a checksum of each file, and one hash per cleaned tile
(`hashes`) from which `cross_split_duplicates` finds tiles shared between splits. Black and
white tiles are left out of duplicate detection: every blank tile is a copy of every other, and
they are reported (and dropped by prepare) as black/white already.

Both hashes are XXH3-128 (the `xxhash` library): it finds exact copies and changed files as surely
as md5 or sha256 do for data nobody forges, at memory speed. md5 of the files and sha256 of the
tiles cost 14 s of CPU for PCAM's 7.25 GB training file, 3x the time to read it from this VM's disk.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from pcamflow import constants
from pcamflow.config import validate_section
from pcamflow.constants import FAULTS
from pcamflow.data.download import checksum_provenance
from pcamflow.data.rawdata import (
    TILE_VALUES,
    RawSplit,
    blank_masks,
    channel_histograms,
    clean_tiles,
    meta_path,
    open_split,
)
from pcamflow.errors import PcamflowError, check_output_file
from pcamflow.io import atomic_path, file_digest, read_json, write_json

log = logging.getLogger(__name__)

HASH_DTYPE = np.dtype("S16")  # XXH3-128 of a cleaned tile's bytes
# A hash file's one field names the algorithm: the S32 (sha256) and S16 (blake2b) files of older
# pcamflows are refused by name, never compared (no duplicate would match).
HASH_FILE_DTYPE = np.dtype([("xxh3_128", HASH_DTYPE)])
CHANNELS = ("R", "G", "B")
VALUE_FAULTS = ("nan", "inf", "out_of_range")  # faults also counted by value, not only by tile


@dataclass
class AuditResult:
    report: dict  # the JSON-ready audit of one split
    hashes: np.ndarray  # (N,) HASH_DTYPE, one per cleaned tile


def audit_split(
    x_path: str | os.PathLike,
    y_path: str | os.PathLike,
    *,
    block_size: int,
    black_max: int,
    white_min: int,
    split: str | None = None,
    threads: int = 2,
) -> AuditResult:
    """Audit one split, reading x in blocks of block_size tiles (never the whole file).

    `threads` threads check each block's tiles (numpy, Pillow and xxhash release the GIL) while the
    next block is read, and one more checksums the files: PCAM's training split in 1.5x to 2.0x the
    time of reading it cold instead of 3.1x to 3.6x (2 cores, benchmarks/scale.py). The results do
    not depend on the thread count.
    """
    split, threads = split or split_of(x_path), max(1, threads)
    with open_split(x_path, y_path) as raw, ThreadPoolExecutor(threads) as pool:
        checksums = _checksums_in_background({"x": raw.x_path, "y": raw.y_path})
        n = len(raw)
        flags = {fault: np.zeros(n, dtype=bool) for fault in FAULTS}
        hashes = np.empty(n, dtype=HASH_DTYPE)
        check = _TileCheck(flags, hashes, black_max, white_min)
        parts, pending = [], []
        # two buffers: block k is read while block k-1's tiles are checked (then k+1 reuses its buffer)
        for start, block in raw.blocks(block_size, buffers=2):
            parts += [future.result() for future in pending]
            pending = [pool.submit(check, tiles, start + offset) for offset, tiles in _shares(block, threads)]
            log.info("audit %s: %d/%d tiles", split or raw.x_path.name, start + len(block), n)
        parts += [future.result() for future in pending]
        report = {
            "split": split,
            "files": _files(raw, split, checksums()),
            "n_tiles": n,
            "shapes": {"x": list(raw.x.shape), "y": list(raw.y_shape)},
            "dtype": {"x": str(raw.dtype), "y": str(raw.y_dtype)},
            "itemsize": raw.dtype.itemsize,
            "size": _size(raw),
            "value_range": _value_range([p.low for p in parts], [p.high for p in parts]),
            "thresholds": {"black_max": black_max, "white_min": white_min},
            "faults": {
                fault: {"tiles": int(flags[fault].sum()), "indices": np.flatnonzero(flags[fault]).tolist()}
                | ({"values": sum(p.values[fault] for p in parts)} if fault in VALUE_FAULTS else {})
                for fault in FAULTS
            },
            "class_balance": _class_balance(raw.labels),
            "duplicates": _within_split_duplicates(hashes, flags["black"] | flags["white"]),
            "cleaned_histogram": dict(zip(CHANNELS, sum(p.histogram for p in parts).tolist())),
            "block_size": block_size,
        }
    return AuditResult(report=report, hashes=hashes)


@dataclass
class _Part:
    """What the check of one run of tiles found beside its flags and hashes."""

    low: float  # finite raw value range (NaN where it has no finite value)
    high: float
    values: dict[str, int]  # values per VALUE_FAULTS fault
    histogram: np.ndarray  # (3, 256) cleaned values per channel


@dataclass
class _TileCheck:
    """Checks a run of raw tiles in place: its rows of the shared flags and hashes (each thread
    writes rows of its own), the rest returned as a _Part."""

    flags: dict[str, np.ndarray]
    hashes: np.ndarray
    black_max: int
    white_min: int

    def __call__(self, tiles: np.ndarray, start: int) -> _Part:
        rows = slice(start, start + len(tiles))
        low, high, values = _scan_raw_block(tiles, self.flags, rows)
        cleaned = clean_tiles(tiles, in_place=True)
        self.flags["black"][rows], self.flags["white"][rows] = blank_masks(
            cleaned, self.black_max, self.white_min
        )
        self.hashes[rows] = [tile_hash(tile) for tile in cleaned]
        return _Part(low, high, values, channel_histograms(cleaned))


def _shares(block: np.ndarray, n: int) -> list[tuple[int, np.ndarray]]:
    """(offset, tiles) of n consecutive shares of a block, as equal as can be."""
    bounds = np.linspace(0, len(block), n + 1).astype(int)
    return [(int(a), block[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def tile_hash(tile: np.ndarray) -> bytes:
    """XXH3-128 of one cleaned uint8 tile (exact duplicates share it)."""
    return xxhash.xxh3_128_digest(np.ascontiguousarray(tile))


def blank_indices(report: dict) -> set[int]:
    """Black and white tiles of an audited split (left out of duplicate detection)."""
    return set(report["faults"]["black"]["indices"]) | set(report["faults"]["white"]["indices"])


def cross_split_duplicates(hashes: dict[str, np.ndarray], reports: dict[str, dict]) -> dict:
    """Pairs of identical cleaned tiles in different splits (black and white tiles excluded)."""
    splits = [s for s in constants.SPLITS if s in hashes]
    positions = {s: _positions(hashes[s], blank_indices(reports[s])) for s in splits}
    pairs, counts = [], {}
    for i, split_a in enumerate(splits):
        for split_b in splits[i + 1 :]:
            found = sorted(
                (ia, ib)
                for digest in positions[split_a].keys() & positions[split_b].keys()
                for ia in positions[split_a][digest]
                for ib in positions[split_b][digest]
            )
            found = [
                {"split_a": split_a, "index_a": ia, "split_b": split_b, "index_b": ib} for ia, ib in found
            ]
            counts[f"{split_a}-{split_b}"] = len(found)
            pairs += found
    train_leaks = sorted({p["index_a"] for p in pairs if p["split_a"] == "train"})
    return {
        "n_pairs": len(pairs),
        "counts": counts,
        "pairs": pairs,
        "train_indices_in_valid_or_test": train_leaks,
        "note": "exact duplicates of the cleaned uint8 tile; black and white tiles are not compared",
    }


def split_of(x_path: str | os.PathLike) -> str | None:
    """The split a raw x file belongs to, from PCAM's file name (None for other names)."""
    name = Path(x_path).name
    return next((s for s in constants.SPLITS if name == constants.raw_filename(s, "x")), None)


# ---- writing ----


def write_audit(
    result: AuditResult,
    json_path: str | os.PathLike,
    plot_path: str | os.PathLike | None = None,
    hashes_path: str | os.PathLike | None = None,
) -> None:
    if hashes_path is not None:
        save_hashes(hashes_path, result.hashes)
    if plot_path is not None:
        plot_audit(result.report, plot_path)
    write_json(json_path, result.report)


def save_hashes(path: str | os.PathLike, hashes: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, hashes.view(HASH_FILE_DTYPE))


def load_hashes(path: str | os.PathLike) -> np.ndarray:
    hashes = np.load(path)
    if hashes.dtype in (np.dtype("S32"), np.dtype("S16")):
        algorithm = "sha256" if hashes.dtype.itemsize == 32 else "blake2b"
        raise PcamflowError(
            f"{path}: tile hashes of an older pcamflow ({algorithm}); rerun this split's audit"
        )
    if hashes.dtype != HASH_FILE_DTYPE:
        raise PcamflowError(
            f"{path}: not an audit hash file (dtype {hashes.dtype}, expected {HASH_FILE_DTYPE})"
        )
    return hashes.view(HASH_DTYPE)


def plot_audit(report: dict, path: str | os.PathLike) -> None:
    """One figure per split: cleaned intensity histogram per channel, class balance, fault counts."""
    from matplotlib.ticker import MaxNLocator

    from pcamflow.plots import plt, save_figure  # plots selects the Agg backend

    fig, (ax_hist, ax_class, ax_fault) = plt.subplots(
        1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [2.2, 1, 1.4]}
    )
    for channel, colour in zip(CHANNELS, ("tab:red", "tab:green", "tab:blue")):
        ax_hist.plot(np.arange(256), report["cleaned_histogram"][channel], color=colour, label=channel)
    ax_hist.set_yscale("symlog", linthresh=1)  # log scale that still shows empty bins at 0
    ax_hist.set(xlabel="cleaned value (NaN/inf -> 0, clipped to 0..255)", ylabel="pixels")
    ax_hist.set_title("intensity per channel")
    ax_hist.legend()
    balance = report["class_balance"]
    bars = ax_class.bar(["0 (normal)", "1 (tumour)"], [balance["0"], balance["1"]], color=["grey", "purple"])
    ax_class.bar_label(bars)
    ax_class.set(ylabel="tiles", title=f"class balance ({balance['positive_fraction']:.1%} positive)")
    counts = [report["faults"][f]["tiles"] for f in FAULTS] + [report["duplicates"]["n_tiles"]]
    if any(counts):
        bars = ax_fault.bar([*FAULTS, "duplicate"], counts, color="tab:orange")
        ax_fault.bar_label(bars)
        ax_fault.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax_fault.tick_params(axis="x", rotation=30)
    else:  # a panel with nothing to show says so
        message = "none found:\nno NaN, inf, out-of-range,\nblack, white or duplicate tiles"
        ax_fault.text(0.5, 0.5, message, ha="center", va="center", transform=ax_fault.transAxes)
        ax_fault.set_axis_off()
    ax_fault.set(ylabel="tiles", title="faulty tiles")
    fig.suptitle(
        f"{report['split'] or report['files']['x']}: {report['n_tiles']} tiles, x stored as {report['dtype']['x']}"
    )
    fig.tight_layout()
    save_figure(fig, path)


# ---- command line ----


def cli_main(args) -> int:
    given = {key: getattr(args, key) for key in ("block_size", "black_max", "white_min")}
    settings = validate_section(
        "audit", {k: v for k, v in given.items() if v is not None}, source="pcamflow audit"
    )
    for option, path in (("--out", args.out), ("--plot", args.plot), ("--hashes", args.hashes)):
        if path is not None:
            check_output_file(path, option, inputs=[args.x, args.y])  # before reading a tile
    result = audit_split(args.x, args.y, **settings)
    write_audit(result, args.out, args.plot, args.hashes)
    faults = ", ".join(f"{f} {result.report['faults'][f]['tiles']}" for f in FAULTS)
    print(f"{args.x}: {result.report['n_tiles']} tiles, {faults}; audit written to {args.out}")
    return 0


def audit_cross(hash_paths: dict[str, str], report_paths: dict[str, str], out: str | os.PathLike) -> dict:
    """Cross-split duplicates from the per-split hash files and audits (rule audit_cross)."""
    hashes = {s: load_hashes(p) for s, p in hash_paths.items()}
    reports = {s: read_json(p) for s, p in report_paths.items()}
    for split, report in reports.items():
        if report["n_tiles"] != len(hashes[split]):
            raise PcamflowError(
                f"{hash_paths[split]}: {len(hashes[split])} hashes but the audit counts {report['n_tiles']} tiles"
            )
    cross = cross_split_duplicates(hashes, reports)
    write_json(out, cross)
    return cross


# ---- helpers ----


def _scan_raw_block(block: np.ndarray, flags: dict, rows: slice) -> tuple[float, float, dict[str, int]]:
    """Flag tiles holding NaN, inf or finite values outside [0, 255] (their `rows` of flags); return
    the block's finite min/max and the count of such values per fault."""
    flat = block.reshape(len(block), -1)
    values = dict.fromkeys(VALUE_FAULTS, 0)
    if not np.issubdtype(block.dtype, np.floating):
        return float(flat.min()), float(flat.max()), values
    nan_per_tile = np.isnan(flat).sum(axis=1)
    inf_per_tile = np.isinf(flat).sum(axis=1)
    flags["nan"][rows] = nan_per_tile > 0
    flags["inf"][rows] = inf_per_tile > 0
    values["nan"], values["inf"] = int(nan_per_tile.sum()), int(inf_per_tile.sum())
    # fmin/fmax skip NaN; tiles holding inf (few) are redone on their finite values alone.
    low, high = np.fmin.reduce(flat, axis=1), np.fmax.reduce(flat, axis=1)
    for i in np.flatnonzero(inf_per_tile):
        finite = flat[i][np.isfinite(flat[i])]
        low[i], high[i] = (finite.min(), finite.max()) if finite.size else (np.nan, np.nan)
    outside = (low < 0) | (high > 255)
    flags["out_of_range"][rows] = outside
    for i in np.flatnonzero(outside):
        values["out_of_range"] += int(
            np.count_nonzero((flat[i] < 0) | ((flat[i] > 255) & np.isfinite(flat[i])))
        )
    finite_low, finite_high = low[~np.isnan(low)], high[~np.isnan(high)]  # all-NaN tiles have no range
    return (
        float(finite_low.min()) if finite_low.size else np.nan,
        float(finite_high.max()) if finite_high.size else np.nan,
        values,
    )


def _checksums_in_background(paths: dict[str, Path]) -> Callable[[], dict[str, str]]:
    """Start the checksum of each file on a thread of its own (file reads and xxhash release the GIL),
    beside the tile checks; the returned function waits for the digests. A daemon thread: an audit
    that stops early (bad tiles, Ctrl-C) does not wait for it."""
    done: dict = {}

    def digest_all() -> None:
        try:
            done["digests"] = {
                kind: file_digest(path, constants.RAW_CHECKSUM) for kind, path in paths.items()
            }
        except BaseException as err:  # handed to the waiting caller
            done["error"] = err

    thread = threading.Thread(target=digest_all, name="audit-checksums", daemon=True)
    thread.start()

    def wait() -> dict[str, str]:
        thread.join()
        if "error" in done:
            raise done["error"]
        return done["digests"]

    return wait


def _files(raw: RawSplit, split: str | None, checksums: dict[str, str]) -> dict:
    meta = meta_path(raw.x_path, split) if split else None
    return {
        "x": str(raw.x_path),
        "y": str(raw.y_path),
        constants.RAW_CHECKSUM: checksums,
        # whether each file traces back to Zenodo's published md5 (through pcamflow's download record)
        "provenance": {
            kind: checksum_provenance(path, checksums[kind])
            for kind, path in (("x", raw.x_path), ("y", raw.y_path))
        },
        "meta": {"path": str(meta) if meta else None, "found": bool(meta and meta.exists())},
    }


def _size(raw: RawSplit) -> dict:
    n = len(raw)
    x_bytes = raw.x_path.stat().st_size
    uint8_bytes = n * TILE_VALUES
    itemsize = raw.dtype.itemsize
    reason = f"{raw.dtype}: {itemsize} byte{'s' if itemsize > 1 else ''} per value"
    reason += f", {itemsize}x the uint8 size" if itemsize > 1 else ", the compact size"
    compression = raw.x.compression
    if compression:
        reason += (
            f"; {compression}-compressed to {x_bytes / (uint8_bytes * itemsize):.0%} of that"
            f" ({x_bytes / uint8_bytes:.2f}x the uint8 size on disk)"
        )
    return {
        "x_bytes": x_bytes,
        "y_bytes": raw.y_path.stat().st_size,
        "uint8_bytes": uint8_bytes,
        "ratio_to_uint8": round(x_bytes / uint8_bytes, 3),
        "compression": compression,
        "chunks": list(raw.x.chunks) if raw.x.chunks else None,
        "reason": reason,
    }


def _value_range(lows: list[float], highs: list[float]) -> dict:
    lows, highs = np.array(lows), np.array(highs)
    lows, highs = lows[~np.isnan(lows)], highs[~np.isnan(highs)]
    return {
        "min": float(lows.min()) if lows.size else None,
        "max": float(highs.max()) if highs.size else None,
        "of": "finite raw values",
    }


def _class_balance(labels: np.ndarray) -> dict:
    positives = int(labels.sum())
    return {"0": len(labels) - positives, "1": positives, "positive_fraction": positives / len(labels)}


def _positions(hashes: np.ndarray, skip: set[int]) -> dict[bytes, list[int]]:
    """hash -> indices holding it, leaving out the indices in skip."""
    positions: dict[bytes, list[int]] = {}
    for index, digest in enumerate(hashes.tolist()):
        if index not in skip:
            positions.setdefault(digest, []).append(index)
    return positions


def _within_split_duplicates(hashes: np.ndarray, blank: np.ndarray) -> dict:
    groups = [idx for idx in _positions(hashes, set(np.flatnonzero(blank).tolist())).values() if len(idx) > 1]
    return {
        "n_groups": len(groups),
        "n_tiles": sum(len(g) for g in groups),
        "groups": groups,
        "note": "exact duplicates of the cleaned uint8 tile; black and white tiles are not compared",
    }
