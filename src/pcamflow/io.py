"""File helpers: atomic outputs (written to a temporary name, then renamed), digests, and the
streaming writer of large files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    disk reads READ_AHEAD bytes ahead, so that reading a cold file and hashing it overlap."""
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


class StreamWriter:
    """Write a large file front to back, hashing it on the way: what prepare writes the store with.

    The bytes gather in a page-aligned buffer; each full buffer is hashed and written on two threads
    while the next one fills (hashlib and os.write release the GIL), so memory stays at two buffers.
    Where the file system takes it (Linux), the file is opened with O_DIRECT: whole aligned buffers
    go past the page cache. On the 2-core VM of benchmarks/scale.py, page-cache writes of a 4 GB
    file ran at 0.3 to 0.7 GB/s, direct ones at 2.5 to 2.9 GB/s. Elsewhere, plain writes.
    """

    BUFFER = 32 << 20  # bytes; a multiple of every block size O_DIRECT may ask for alignment to
    ALIGN = 4096

    def __init__(self, path: str | os.PathLike, algorithm: str | None = "sha256"):
        self.path, self.size = Path(path), 0
        self.digest = new_digest(algorithm) if algorithm else None  # None: no hash (benchmarks/scale.py)
        self._fd = _open_direct(self.path)
        self._buffers = [mmap.mmap(-1, self.BUFFER) for _ in range(2)]  # page-aligned, as O_DIRECT needs
        self._filled = 0
        self._threads = ThreadPoolExecutor(2, thread_name_prefix="stream-writer")
        self._pending = []

    def write(self, data) -> None:
        data = memoryview(data)
        if not data.nbytes:  # a block with no rows (its cast would fail)
            return
        data = data.cast("B")
        while len(data):
            n = min(len(data), self.BUFFER - self._filled)
            self._buffers[0][self._filled : self._filled + n] = data[:n]
            self._filled, self.size, data = self._filled + n, self.size + n, data[n:]
            if self._filled == self.BUFFER:
                self._hand_over()

    def finish(self) -> str | None:
        """Write what is left, cut the file to the bytes given, close it; return the hex digest."""
        self._hand_over()
        self._wait()
        os.ftruncate(self._fd, self.size)  # the last buffer went out padded to whole blocks
        self.close()
        return self.digest.hexdigest() if self.digest else None

    def close(self) -> None:
        """Stop and release everything (idempotent; after an error the file is incomplete)."""
        if self._fd is None:
            return
        with contextlib.suppress(Exception):
            self._wait()
        os.close(self._fd)
        self._fd = None
        self._threads.shutdown()
        # dropped, not closed: a failed write's traceback may still hold a view of one
        self._buffers = []

    def _hand_over(self) -> None:
        """Hash and write the filled buffer on the threads; fill the other one meanwhile."""
        self._wait()  # the other buffer's turn is over: one buffer in flight keeps the hash in order
        if not self._filled:
            return
        buffer, filled = self._buffers[0], self._filled
        padded = -(-filled // self.ALIGN) * self.ALIGN
        self._pending = [self._threads.submit(_write_all, self._fd, buffer, padded)]
        if self.digest:
            self._pending.append(self._threads.submit(_update_digest, self.digest, buffer, filled))
        self._buffers.reverse()
        self._filled = 0

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.result()
            except OSError as err:  # os.write names no file: name it (e.g. a full disk's one line)
                if err.filename is None:
                    raise OSError(err.errno, err.strerror, str(self.path)) from err
                raise


def _open_direct(path: Path) -> int:
    """A new file for writing, with O_DIRECT where the system and file system take it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        with contextlib.suppress(OSError):  # EINVAL: this file system has no direct I/O (e.g. old tmpfs)
            return os.open(path, flags | direct, 0o666)
    return os.open(path, flags, 0o666)


def _update_digest(digest, buffer: mmap.mmap, length: int) -> None:
    with memoryview(buffer) as view:
        digest.update(view[:length])


def _write_all(fd: int, buffer: mmap.mmap, length: int) -> None:
    """Write buffer[:length] at the file's position. A direct write that the file system refuses
    (EINVAL: an alignment it wants bigger) or cuts short is finished with plain writes."""
    with memoryview(buffer) as view:
        view = view[:length]
        while len(view):
            try:
                view = view[os.write(fd, view) :]
            except OSError as err:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                if err.errno != errno.EINVAL or not flags & getattr(os, "O_DIRECT", 0):
                    raise
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)


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
