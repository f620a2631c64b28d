"""`pcamflow predict`: probabilities and labels for tiles from a model bundle (see `pcamflow.deployment.export`).

Inputs are PCAM H5 files (`x`, with the labels of a `_y.h5` beside it when present), folders of
PNG/TIFF tiles, or single image files. Each tile becomes one CSV row: its source (file and index),
P(positive), the label at the bundle's threshold, and the true label when the input holds one.
An input that cannot be read, or a tile that is not 96 x 96 RGB (without --resize), becomes a row
with an `error` and no probability; the rest are still predicted. While predicting, the input's
intensity histogram is compared with the training data's (`pcamflow.deployment.drift`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pcamflow import constants
from pcamflow.data import rawdata
from pcamflow.data.rawdata import H5_SUFFIXES, blank_masks, clean_tiles
from pcamflow.data.transforms import D4_SIZE, apply_d4
from pcamflow.deployment.drift import DriftReport, HistogramAccumulator, compare
from pcamflow.deployment.export import MAX_BATCH, Bundle, load_bundle
from pcamflow.errors import PcamflowError, check_output_file, first_line
from pcamflow.io import write_csv

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
COLUMNS = ["source", "index", "probability", "label", "y_true", "flag", "error"]
MAX_LISTED = 10  # skipped inputs named on stderr; the CSV lists them all


@dataclass
class Chunk:
    """Consecutive tiles of one source (or one failure, with no tiles)."""

    source: str
    index: np.ndarray  # (k,) position of each tile in its source
    tiles: np.ndarray | None  # (k, 96, 96, 3) uint8
    y_true: np.ndarray | None = None  # (k,) labels when the source has them
    error: str | None = None
    flag: np.ndarray | None = None  # (k,) why a tile's prediction is suspect ("" when it is not)


@dataclass
class PredictResult:
    table: pd.DataFrame  # one row per tile or failed input, columns COLUMNS
    drift: DriftReport
    failures: list[str] = field(default_factory=list)  # "source: reason"

    @property
    def n_predicted(self) -> int:
        return int(self.table["probability"].notna().sum())


# ---- inputs ----


def expand_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Files in input order; a folder becomes its H5/PNG/TIFF files, sorted by name."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in (*H5_SUFFIXES, *IMAGE_SUFFIXES)
            )
            if not found:
                log.warning("%s: no .h5, .png or .tif(f) files in this folder", path)
            labels = {labels_beside(p) for p in found if p.suffix.lower() in H5_SUFFIXES}
            files += [p for p in found if p not in labels]  # a split's _y.h5 fills y_true of its _x.h5
        else:
            files.append(path)
    return files


def tile_count(path: Path) -> int:
    """Tiles a file holds, for the progress bar (1 for an image; 0 when unreadable)."""
    if path.suffix.lower() not in H5_SUFFIXES:
        return 1
    try:
        import h5py

        with h5py.File(path, "r") as fh:
            return int(fh[constants.X_KEY].shape[0])
    except (OSError, KeyError, TypeError, IndexError):
        return 0


def read_chunks(path: Path, *, block_size: int, resize: bool) -> Iterator[Chunk]:
    """The tiles of one input file as chunks; any problem becomes a chunk with an error."""
    source = str(path)
    try:
        if not path.exists():
            raise PcamflowError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix in H5_SUFFIXES:
            yield from _h5_chunks(path, block_size)
        elif suffix in IMAGE_SUFFIXES:
            tile = read_image(path, resize=resize)[None]
            yield Chunk(source, np.zeros(1, dtype=np.int64), tile, flag=blank_flags(tile))
        else:
            raise PcamflowError(f"{path}: not an .h5, .png or .tif(f) file")
    except PcamflowError as err:
        yield Chunk(source, np.zeros(0, dtype=np.int64), None, error=str(err))


def read_image(path: Path, *, resize: bool) -> np.ndarray:
    """A 96 x 96 RGB tile as uint8 (96, 96, 3); other sizes or modes only with resize=True."""
    from PIL import Image, UnidentifiedImageError

    height, width, _ = constants.TILE_SHAPE
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (width, height) or image.mode != "RGB":
                if not resize:
                    raise PcamflowError(
                        f"{path}: tile is {image.size[0]}x{image.size[1]} {image.mode}, expected "
                        f"{width}x{height} RGB (pass --resize to convert and resize it)"
                    )
                image = _to_8bit(image).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PcamflowError(f"{path}: unreadable image ({first_line(exc)})") from None


def _to_8bit(image):
    """16/32-bit grey images scaled to 8 bits by their bit depth: PIL's convert() clips them instead,
    which turns every 16-bit grey level above 255 white."""
    from PIL import Image

    if image.mode not in ("I;16", "I;16L", "I;16B", "I"):
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8), mode="L")


def labels_beside(x_path: Path) -> Path | None:
    """The labels file of a raw PCAM `_x.h5` input, when it has one beside it."""
    try:
        y_path = rawdata.labels_path(x_path)
    except PcamflowError:  # not named like a raw x file: tiles without labels
        return None
    return y_path if y_path.exists() else None


def _h5_chunks(path: Path, block_size: int) -> Iterator[Chunk]:
    y_path = labels_beside(path)
    opened = rawdata.open_split(path, y_path) if y_path is not None else rawdata.open_tiles(path)
    largest = -np.inf  # of a float file's finite values
    with opened as tiles:
        labels = getattr(tiles, "labels", None)
        for start, block in tiles.blocks(block_size):
            index = np.arange(start, start + len(block))
            y_true = labels[index] if labels is not None else None
            if np.issubdtype(block.dtype, np.floating):
                largest = max(largest, float(np.max(block, initial=-np.inf, where=np.isfinite(block))))
            flag = nonfinite_flags(block)
            cleaned = clean_tiles(block, in_place=True)
            yield Chunk(str(path), index, cleaned, y_true, flag=_merge_flags(flag, blank_flags(cleaned)))
    if -np.inf < largest <= 1.0:
        log.warning(
            "%s: float tiles whose maximum is %.3g: probably scaled to [0, 1]; the model expects 0-255 as "
            "PCAM stores them (multiply by 255); its tiles are flagged black",
            path,
            largest,
        )


@functools.cache
def _blank_thresholds() -> tuple[int, int]:
    """audit.black_max and audit.white_min (schema defaults): what the audit calls black and white."""
    from pcamflow.config import validate_section

    audit = validate_section("audit", {})
    return audit["black_max"], audit["white_min"]


def nonfinite_flags(block: np.ndarray) -> np.ndarray:
    """Per tile "has_nan" / "has_inf" (raw float tiles; cleaning makes both black pixels), else ""
    (not "nan": CSV readers take that for a missing value)."""
    flags = np.full(len(block), "", dtype=object)
    if np.issubdtype(block.dtype, np.floating):
        flat = block.reshape(len(block), -1)
        flags[np.isinf(flat).any(axis=1)] = "has_inf"
        flags[np.isnan(flat).any(axis=1)] = "has_nan"
    return flags


def blank_flags(tiles: np.ndarray) -> np.ndarray:
    """Per cleaned uint8 tile "black" / "white" (as the audit defines them), else ""."""
    black, white = blank_masks(tiles, *_blank_thresholds())
    flags = np.full(len(tiles), "", dtype=object)
    flags[black], flags[white] = "black", "white"
    return flags


def _merge_flags(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The first flag that applies per tile (NaN tiles are also black once cleaned: say NaN)."""
    return np.where(first != "", first, second)


# ---- prediction ----


@torch.inference_mode()
def predict_tiles(bundle: Bundle, tiles: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """P(positive) of uint8 (N, 96, 96, 3) tiles as float64; tta averages the 8 D4 views in the same
    order and precision as `predictions.predict_proba`, so both give the same numbers."""
    x = torch.from_numpy(np.ascontiguousarray(tiles))
    if bundle.device.type == "cuda":
        x = x.pin_memory().to(bundle.device, non_blocking=True)
    views = range(D4_SIZE) if tta else (0,)
    total = None
    for view in views:
        prob = bundle.program(apply_d4(x, view) if view else x).cpu().double()
        total = prob if total is None else total + prob
    return (total / len(views)).numpy()


def predict_inputs(
    bundle: Bundle,
    inputs: list[str | os.PathLike],
    *,
    batch_size: int = 256,
    tta: bool = False,
    resize: bool = False,
    progress: bool = False,
) -> PredictResult:
    """Predict every tile of `inputs` in batches of at most batch_size; failures become rows."""
    from tqdm import tqdm

    if not 1 <= batch_size <= MAX_BATCH:
        raise PcamflowError(f"--batch-size {batch_size}: must be between 1 and {MAX_BATCH}")
    files = expand_inputs(inputs)
    if not files:
        raise PcamflowError(f"{', '.join(map(str, inputs))}: no input files found")
    done: list[tuple[Chunk, np.ndarray | None]] = []
    pending: list[Chunk] = []
    histogram = HistogramAccumulator()
    total = sum(map(tile_count, files)) if progress else None  # opens every H5: only for a shown bar
    bar = tqdm(total=total, unit="tile", disable=not progress, file=sys.stderr)

    def flush() -> None:
        if not pending:
            return
        tiles = np.concatenate([c.tiles for c in pending])
        prob = predict_tiles(bundle, tiles, tta=tta)
        histogram.update(tiles)
        bar.update(len(tiles))
        for chunk, part in zip(pending, np.split(prob, np.cumsum([len(c.index) for c in pending])[:-1])):
            chunk.tiles = None  # rows keep only the numbers
            done.append((chunk, part))
        pending.clear()

    with bar:
        for path in files:
            for chunk in read_chunks(path, block_size=batch_size, resize=resize):
                if chunk.error is not None:
                    flush()  # keeps rows in input order
                    done.append((chunk, None))
                    log.warning("skipped %s", chunk.error)
                    continue
                if sum(len(c.index) for c in pending) + len(chunk.index) > batch_size:
                    flush()
                pending.append(chunk)
        flush()
    table = _table(done, bundle.threshold)
    failures = [c.error for c, _ in done if c.error is not None]
    return PredictResult(
        table=table, drift=compare(bundle.reference, histogram.counts, histogram.n_tiles), failures=failures
    )


def _table(done: list[tuple[Chunk, np.ndarray | None]], threshold: float) -> pd.DataFrame:
    """All rows as one DataFrame, built from whole columns: a frame per chunk cost ~1 ms, and a
    folder of PNGs is one chunk per tile. A failed input is one row with only source and error."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
    for chunk, prob in done:
        failed = chunk.error is not None
        n = 1 if failed else len(chunk.index)
        missing = np.full(n, np.nan)  # NaN becomes <NA> in the integer columns below
        parts["source"].append(np.full(n, chunk.source, dtype=object))
        parts["index"].append(missing if failed else chunk.index)
        parts["probability"].append(missing if failed else prob)
        parts["label"].append(missing if failed else prob >= threshold)
        parts["y_true"].append(missing if chunk.y_true is None else chunk.y_true)
        no_flag = chunk.flag is None or failed
        parts["flag"].append(
            np.full(n, None, dtype=object) if no_flag else np.where(chunk.flag == "", None, chunk.flag)
        )
        parts["error"].append(np.full(n, chunk.error, dtype=object))
    columns = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    for name in ("flag", "error"):  # None where none, not str's NaN
        columns[name] = pd.Series(columns[name], dtype=object)
    table = pd.DataFrame(columns, columns=COLUMNS)
    return table.astype({"index": "Int64", "probability": "float64", "label": "Int64", "y_true": "Int64"})


def check_out_is_no_input(out: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
    """Refuse an --out that is one of the inputs (or a labels file read beside one): writing the CSV
    would replace it."""
    out = Path(out)
    if not out.exists():
        return
    for path in expand_inputs(inputs):
        for used in (path, labels_beside(path) if path.suffix.lower() in H5_SUFFIXES else None):
            if used is not None and used.exists() and os.path.samefile(used, out):
                raise PcamflowError(
                    f"--out {out}: is one of the inputs ({used}); writing it would replace it"
                )


def cli_main(args) -> int:
    """`pcamflow predict`: exit 0 when every input was predicted, 1 when some were skipped (listed)."""
    check_out_is_no_input(args.out, args.input)
    # before the prediction, not after it; never inside the bundle or a folder of inputs
    check_output_file(args.out, inputs=[args.model, *(path for path in args.input if Path(path).is_dir())])
    bundle = load_bundle(args.model, args.device)
    result = predict_inputs(
        bundle,
        args.input,
        batch_size=args.batch_size,
        tta=bundle.metadata.get("tta", False) if args.tta is None else args.tta,
        resize=args.resize,
        progress=sys.stderr.isatty(),
    )
    write_csv(args.out, result.table)
    (log.warning if result.drift.drifted else log.info)("%s", result.drift.summary())
    n = result.n_predicted
    positives = int((result.table["label"] == 1).sum())
    print(
        f"wrote {args.out}: {n} tiles predicted, {positives} positive at threshold {bundle.threshold:.4f}"
        + (f"; {len(result.failures)} inputs skipped" if result.failures else "")
    )
    flagged = result.table["flag"].value_counts()
    if len(flagged):
        print(
            f"{int(flagged.sum())} tiles flagged ("
            + ", ".join(f"{n} {name}" for name, n in flagged.items())
            + f"): their predictions mean little; see the `flag` column of {args.out}",
            file=sys.stderr,
        )
    if result.failures:
        listed = result.failures[:MAX_LISTED]
        more = len(result.failures) - len(listed)
        print("skipped inputs:\n  " + "\n  ".join(listed), file=sys.stderr)
        if more:
            print(f"  ... and {more} more (the `error` column of {args.out} lists all)", file=sys.stderr)
    if n == 0:
        raise PcamflowError(f"no tile could be predicted (every input was skipped; see {args.out})")
    return 1 if result.failures else 0
