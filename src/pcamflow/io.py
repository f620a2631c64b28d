"""Atomic file writing: every output is written to a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from pcamflow.errors import disk_full_cause


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give the result the usual umask-based mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as err:
        full = disk_full_cause(err)
        if full is not None:  # whatever a writer made of it (torch: RuntimeError): name the output
            raise OSError(full.errno, full.strerror, str(path)) from err
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file
            err.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a new empty directory beside `path`; rename it onto `path` only if the block succeeds.

    replace=True: a directory already at `path` is replaced. replace=False: one that is there at the
    rename (another process made it meanwhile) is kept and this one dropped. On failure `path` is
    left as it was and the temporary directory removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        if replace:
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def json_scalar(value: Any) -> Any:
    """A JSON-friendly scalar: numpy scalars unwrapped, NaN as None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def new_digest(algorithm: str):
    """A hashlib-style digest object: hashlib's algorithms, and "xxh128" (XXH3-128, what `xxh128sum`
    prints), which is 40x faster than md5 here and checks the raw PCAM files (see data/audit.py)."""
    return xxhash.xxh3_128() if algorithm == "xxh128" else hashlib.new(algorithm)


READ_AHEAD = 64 << 20  # bytes a streaming reader has the disk fetch ahead of what it works on


def read_ahead(fd: int, offset: int, length: int) -> None:
    """Have the kernel read [offset, offset + length) of an open file into the page cache in the
    background (posix_fadvise WILLNEED), so that a cold sequential read overlaps with the caller's
    work on what it read before instead of taking turns with it (the kernel's own readahead covers
    a few MB). A hint: where it fails, nothing; the reads themselves check."""
    if length > 0 and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 8 << 20) -> str:
    """Hex digest of a file, read in chunks into one reused buffer (never whole in memory) while the
    disk reads READ_AHEAD bytes ahead: a cold sha256 of a store takes its read time, not read plus hash."""
    digest = new_digest(algorithm)
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        read_ahead(fh.fileno(), 0, READ_AHEAD)
        position = 0
        while size := fh.readinto(buffer):
            position += size
            read_ahead(fh.fileno(), position + READ_AHEAD - chunk, chunk)
            digest.update(buffer[:size])
    return digest.hexdigest()


def md5sum(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def sha256sum(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def now_iso() -> str:
    """The one timestamp style of every record pcamflow writes: UTC, ISO 8601, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")
