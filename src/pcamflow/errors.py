"""The one exception type for mistakes a user can fix (bad input, bad config), and small helpers
that turn common mistakes into its one-line messages."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path


class PcamflowError(Exception):
    """A user-facing error: its message is one line naming the file or key and the problem."""


class DataChanged(PcamflowError):
    """Data a job reads differs from the record made when it was written (a damaged or replaced file
    of the prepared store): never a run's own failure, so a training job fails without recording one."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on SIGTERM/SIGUSR1; run again to resume


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived during training: the state is checkpointed; exit EXIT_PREEMPTED."""

    exit_code = EXIT_PREEMPTED


# A write that failed for want of space: the user frees space (or asks for quota), nothing else helps.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The write that found the disk full or the quota used up, when exc is one or was raised from
    or during one (torch.save meets the OSError, then raises RuntimeError 'unexpected pos ...')."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_line(exc: BaseException) -> str | None:
    """'no space left on device writing FILE' for a full disk (disk_full_cause), else None."""
    full = disk_full_cause(exc)
    if full is None:
        return None
    where = full.filename or _open_file_in_traceback(full.__traceback__)
    return DISK_FULL[full.errno] + (f" writing {where}" if where else "")


def _open_file_in_traceback(tb) -> str | None:
    """The name of a file object the failing code held (a write error of an open file names none)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has none), for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_output_file(
    path: str | os.PathLike, option: str = "--out", inputs: Sequence[str | os.PathLike] = ()
) -> None:
    """Refuse an output file that cannot be written, or must not be, before the work that produces it.

    Missing parent folders are fine (the writers create them); a directory at `path`, anything
    there that is not a regular file (a device, a FIFO, a socket, a link to one: writing would
    replace it with a file, or block), a file where a parent folder should be, a folder or file
    without write permission, or a path at or inside one of the command's `inputs` (a bundle, a
    store, a raw-data folder) is not.
    """
    path = Path(path)
    if path.is_dir():
        raise PcamflowError(f"{option} {path}: is a directory; give a file name inside it")
    _check_not_special(path, option)
    _check_not_an_input(path, option, inputs)
    if path.exists() and not os.access(path, os.W_OK):
        raise PcamflowError(f"{option} {path}: file is not writable (permission denied)")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise PcamflowError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PcamflowError(f"{option} {path}: cannot write in {folder} (permission denied)")


def check_output_dir(
    path: str | os.PathLike, option: str = "--out", inputs: Sequence[str | os.PathLike] = ()
) -> None:
    """Refuse an output folder that cannot be made or written, or must not be, before the work that
    fills it: a file (or anything else) at `path` or where a parent folder should be, a folder
    without write permission, or a folder at or inside one of the command's `inputs`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        _check_not_special(path, option)
        raise PcamflowError(f"{option} {path}: is a file, not a folder")
    _check_not_an_input(path, option, inputs)
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise PcamflowError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PcamflowError(f"{option} {path}: cannot write in {folder} (permission denied)")


def refuse_to_replace(folder: str | os.PathLike, names: Sequence[str], what: str, flag: str) -> None:
    """Refuse a folder that already holds any of the files a command would write there (they may be
    real data, or a store finished runs were trained on); `flag` is how to replace them on purpose."""
    present = [name for name in names if (Path(folder) / name).exists()]
    if present:
        listed = ", ".join(present[:2]) + (" ..." if len(present) > 2 else "")
        raise PcamflowError(
            f"{folder}: already holds {listed} ({len(present)} {what}); refusing to overwrite them "
            f"({flag} replaces them)"
        )


_SPECIAL = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def _check_not_special(path: Path, option: str) -> None:
    """Refuse a path (or the target of a link there) that exists and is no regular file or folder."""
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there, or a dangling link (replaced by the file)
        return
    kind = _SPECIAL.get(stat.S_IFMT(mode))
    if kind:
        link = " (through a symbolic link)" if path.is_symlink() else ""
        raise PcamflowError(f"{option} {path}: is {kind}{link}, not a regular file; refused")


def _check_not_an_input(path: Path, option: str, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output at or inside one of the inputs (links followed)."""
    target = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source in target.parents:
            where = "is" if target == source else "lies inside"
            raise PcamflowError(f"{option} {path}: {where} the input {given}; writing there would change it")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
