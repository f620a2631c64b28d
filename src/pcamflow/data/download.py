"""Download and verify the real PCAM files (Zenodo record 2546921), one file at a time.

Each `.h5.gz` is streamed to a hidden `.part` file beside its target, resumed with an HTTP Range
request after an interruption, checked against its published md5, then gunzipped as a stream to
a temporary name and renamed onto the `.h5`: a target either exists whole or not at all, and
memory use stays at one block whatever the file size. A small JSON beside each `.h5` records
where it came from, the md5 of the `.gz` and the xxh128 of the `.h5` (the checksum the audit takes).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pcamflow import constants
from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_path, md5sum, new_digest, now_iso, read_json, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read while downloading and gunzipping
RECORD_SUFFIX = ".download.json"
MAX_BACKOFF_S = 60  # the longest wait between two attempts
# Network failures worth another (resumed) attempt; HTTP 4xx answers are not among them.
TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)


@dataclass(frozen=True)
class Source:
    """Where the files come from and how hard to try."""

    base_url: str
    timeout_s: float = 60
    retries: int = 5
    backoff_s: float = 2.0  # wait before retry k is backoff_s * k, at most MAX_BACKOFF_S
    md5: dict | None = None  # overrides of constants.GZ_MD5 (a mirror that re-compressed the files)

    @classmethod
    def from_config(cls, settings: dict, **overrides) -> Source:
        """From the config's validated `download:` section."""
        keys = ("base_url", "timeout_s", "retries", "md5")
        return cls(**{k: settings[k] for k in keys if k in settings}, **overrides)

    def url(self, split: str, kind: str) -> str:
        return f"{self.base_url.rstrip('/')}/{constants.raw_filename(split, kind)}.gz"

    def expected_md5(self, split: str, kind: str) -> str:
        key = file_key(split, kind)
        return (self.md5 or {}).get(key) or constants.GZ_MD5[key]


def file_key(split: str, kind: str) -> str:
    """The name of one file in constants.GZ_MD5, e.g. 'train_x'."""
    return f"{split}_{kind}"


def all_files() -> list[tuple[str, str]]:
    return [(split, kind) for split in constants.SPLITS for kind in ("x", "y")]


def part_path(h5_path: Path) -> Path:
    """Where the .gz of h5_path is downloaded to (kept after an interruption, for resuming)."""
    return h5_path.with_name(f".{h5_path.name}.gz.part")


def record_path(h5_path: Path) -> Path:
    return h5_path.with_name(h5_path.name + RECORD_SUFFIX)


def missing_files(data_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(split, kind) of every raw .h5 file not yet in data_dir."""
    data_dir = Path(data_dir)
    return [(s, k) for s, k in all_files() if not (data_dir / constants.raw_filename(s, k)).exists()]


# ---- one file ----


def download_file(
    data_dir: str | os.PathLike, split: str, kind: str, source: Source, *, progress: bool = True
) -> dict:
    """Download, verify and gunzip one raw PCAM file into data_dir; return its record."""
    h5_path = Path(data_dir) / constants.raw_filename(split, kind)
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    url, expected = source.url(split, kind), source.expected_md5(split, kind)
    part = part_path(h5_path)
    gz_md5 = fetch(url, part, source, progress=progress)
    if gz_md5 != expected:
        part.unlink()
        raise PcamflowError(
            f"{h5_path.name}.gz from {url}: md5 {gz_md5} does not match the expected {expected}; "
            "the download was removed"
        )
    h5_checksum = gunzip(part, h5_path)
    part.unlink()
    record = {
        "file": h5_path.name,
        "url": url,
        "gz_md5": gz_md5,
        "gz_md5_published": gz_md5 == constants.GZ_MD5[file_key(split, kind)],
        f"h5_{constants.RAW_CHECKSUM}": h5_checksum,
        "h5_bytes": h5_path.stat().st_size,
        "downloaded_at": now_iso(),
    }
    write_json(record_path(h5_path), record)
    log.info("%s: verified (gz md5 %s), h5 %s %s", h5_path.name, gz_md5, constants.RAW_CHECKSUM, h5_checksum)
    return record


def download_missing(data_dir: str | os.PathLike, source: Source, *, progress: bool = True) -> list[dict]:
    """Download every raw file missing from data_dir; files already there are left as they are."""
    todo = missing_files(data_dir)
    if not todo:
        log.info("%s: all six PCAM files present, nothing to download", data_dir)
    return [download_file(data_dir, split, kind, source, progress=progress) for split, kind in todo]


# ---- streaming ----


def fetch(url: str, part: Path, source: Source, *, progress: bool = True) -> str:
    """Download url into part (resuming what part holds) and return the md5 of the whole file.

    Transient failures are retried source.retries times, each attempt resuming with a Range
    request; the partial file is kept when every attempt fails, so the next run resumes too.
    """
    attempts = source.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return _fetch_once(url, part, source.timeout_s, progress)
        except urllib.error.HTTPError as err:
            if err.code < 500:
                raise PcamflowError(
                    f"{url}: HTTP {err.code} {err.reason} (is download.base_url right?)"
                ) from None
            failure = f"HTTP {err.code} {err.reason}"
        except TRANSIENT as err:
            failure = _describe(err)
        if attempt < attempts:
            wait = min(source.backoff_s * attempt, MAX_BACKOFF_S)
            log.warning("%s: %s; retry %d of %d in %.0f s", url, failure, attempt, source.retries, wait)
            time.sleep(wait)
    kept = (
        f"; {_size(part)} bytes kept in {part}, run again to resume" if part.exists() and _size(part) else ""
    )
    raise PcamflowError(f"{url}: {failure} (gave up after {attempts} attempt{'s' * (attempts > 1)}){kept}")


class _Incomplete(http.client.HTTPException):
    """The server closed the connection before sending the whole body."""


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> str:
    offset = _size(part) if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset and _range_total(err.headers) == offset:
            log.info("%s: already complete in %s", url, part)  # an earlier run stopped after downloading
            return md5sum(part)
        if err.code == 416:  # what part holds does not fit the remote file: start again
            part.unlink()
            raise _Incomplete("partial file does not fit the remote file; starting again") from None
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: the server ignored the Range request; downloading from the start", url)
            offset = 0
        elif offset and _range_start(response.headers) != offset:
            part.unlink()
            raise _Incomplete("the server resumed at the wrong offset; starting again")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        digest = _md5_of_prefix(part, offset)
        received = _stream_to(response, part, offset, total, digest, progress, url)
    if total is not None and offset + received < total:
        raise _Incomplete(f"connection closed after {offset + received} of {total} bytes")
    return digest.hexdigest()


def _stream_to(response, part: Path, offset: int, total: int | None, digest, progress: bool, url: str) -> int:
    """Append the response body to part (truncated to offset), updating digest; return bytes received."""
    received = 0
    with (
        open(part, "r+b" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=url.rsplit("/", 1)[-1],
            file=sys.stderr,
            disable=not progress,
            mininterval=1 if sys.stderr.isatty() else 30,  # keep rule logs short
        ) as bar,
    ):
        out.seek(offset)
        out.truncate()
        while block := response.read(CHUNK):
            out.write(block)
            digest.update(block)
            received += len(block)
            bar.update(len(block))
    return received


def _md5_of_prefix(path: Path, length: int):
    """An md5 object fed with the first `length` bytes of path (what an earlier attempt wrote)."""
    digest = hashlib.md5()
    if length:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
    return digest


def gunzip(gz_path: Path, h5_path: Path) -> str:
    """Decompress gz_path onto h5_path as a stream (temporary name, then rename); return its RAW_CHECKSUM."""
    digest = new_digest(constants.RAW_CHECKSUM)
    try:
        with atomic_path(h5_path) as tmp, gzip.open(gz_path, "rb") as src, open(tmp, "wb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise PcamflowError(f"{gz_path}: cannot gunzip ({_describe(err)})") from None
    return digest.hexdigest()


# ---- what is known about files already on disk ----


def checksum_provenance(h5_path: str | os.PathLike, h5_checksum: str) -> dict:
    """Whether an .h5 (with RAW_CHECKSUM h5_checksum, as the audit computed it) traces back to a published md5.

    Zenodo publishes md5s of the .gz files only, so an .h5 traces back only when this module
    downloaded it (from a .gz that matched) and it has not changed since.
    """
    h5_path = Path(h5_path)
    record = record_path(h5_path)
    if not record.exists():
        return {
            "matches_published": None,
            "how": "no published md5 for an uncompressed .h5 (Zenodo lists the .gz files only) and no "
            "download record beside it: a copy from elsewhere, used as it is",
        }
    recorded = read_json(record)
    changed = _changed_since_download(h5_path, recorded, h5_checksum)
    if changed:
        return {"matches_published": False, "how": f"changed since it was downloaded ({changed})"}
    if not recorded.get("gz_md5_published"):
        return {
            "matches_published": False,
            "how": f"downloaded from {recorded.get('url')} whose .gz md5 {recorded.get('gz_md5')} "
            "was checked against an overridden value (download.md5), not the published one",
        }
    return {
        "matches_published": True,
        "how": f"downloaded from {recorded.get('url')}; its .gz matched the published md5 {recorded['gz_md5']}",
    }


def _changed_since_download(h5_path: Path, recorded: dict, h5_checksum: str) -> str | None:
    """How the .h5 differs from what its download record says, or None. A record of a pcamflow
    before 2026-12 holds the .h5's md5 only: that file is hashed again with md5 to compare."""
    key = f"h5_{constants.RAW_CHECKSUM}"
    if key in recorded:
        then, now, algorithm = recorded[key], h5_checksum, constants.RAW_CHECKSUM
    else:
        then, now, algorithm = recorded.get("h5_md5"), md5sum(h5_path), "md5"
    return None if then == now else f"{algorithm} then {then}, now {now}"


# ---- meta CSVs (best effort: no md5 is published for them) ----


def download_meta(data_dir: str | os.PathLike, source: Source, *, progress: bool = True) -> list[str]:
    """Fetch each split's meta CSV that data_dir lacks; a failure is logged, not raised."""
    fetched = []
    for split in constants.SPLITS:
        target = Path(data_dir) / constants.meta_filename(split)
        if target.exists():
            continue
        url = f"{source.base_url.rstrip('/')}/{target.name}"
        part = target.with_name(f".{target.name}.part")
        try:
            fetch(url, part, source, progress=progress)
        except PcamflowError as err:
            log.warning("meta CSV not downloaded (optional): %s", err)
            continue
        os.replace(part, target)
        fetched.append(target.name)
    return fetched


# ---- entry points ----


def rule_main(config: dict, output: str, log_path: str, split: str, kind: str) -> None:
    """The `download` rule's `run:` block: one raw file; messages and progress go to log_path.

    A PcamflowError is written to the log and raised again, so Snakemake reports it as one line.
    """
    with _logging_to(log_path) as stream:
        try:
            download_file(Path(output).parent, split, kind, Source.from_config(config["download"]))
        except PcamflowError as err:
            print(f"pcamflow: error: {err}", file=stream)
            raise


@contextlib.contextmanager
def _logging_to(path: str | os.PathLike):
    """Send this package's logging and stderr (the progress bar) to path, then restore both.

    A `run:` block runs inside a Snakemake process that carries on afterwards, so unlike
    pcamflow.smk.run_script (for `script:`), nothing global may be left changed.
    """
    logger = logging.getLogger("pcamflow")
    saved = logger.level, logger.propagate
    with open(path, "a", buffering=1) as stream, contextlib.redirect_stderr(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield stream
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]


def cli_main(args) -> int:
    """`pcamflow download`: every missing file into --data-dir (with --meta, the meta CSVs too)."""
    from pcamflow.config import validate_section

    given = {k: v for k, v in (("base_url", args.base_url), ("retries", args.retries)) if v is not None}
    source = Source.from_config(validate_section("download", given, source="pcamflow download"))
    records = download_missing(args.data_dir, source)
    meta = download_meta(args.data_dir, source) if args.meta else []
    present = len(all_files()) - len(records)
    print(
        f"{args.data_dir}: downloaded {len(records)} file(s), {present} already present, {len(meta)} meta CSV(s)"
    )
    return 0


# ---- helpers ----


def _size(path: Path) -> int:
    return path.stat().st_size


def _range_start(headers) -> int | None:
    match = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_total(headers) -> int | None:
    match = re.search(r"/(\d+)$", (headers or {}).get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _describe(err: BaseException) -> str:
    """One line for a network error, e.g. 'connection refused' rather than a nested repr."""
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        err = reason
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return "timed out"
    text = str(reason if isinstance(reason, str) else err).strip().splitlines()
    return text[0] if text else type(err).__name__
