"""The one exception type for mistakes a user can fix (bad input, bad config), and small helpers
that turn common mistakes into its one-line messages."""

from __future__ import annotations

import os
from pathlib import Path


class PcamflowError(Exception):
    """A user-facing error: its message is one line naming the file or key and the problem."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on SIGTERM/SIGUSR1; run again to resume


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived during training: the state is checkpointed; exit EXIT_PREEMPTED."""

    exit_code = EXIT_PREEMPTED


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has none), for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output file that cannot be written, before the work that produces it.

    Missing parent folders are fine (the writers create them); a directory at `path`, a file
    where a parent folder should be, or a folder or file without write permission is not.
    """
    path = Path(path)
    if path.is_dir():
        raise PcamflowError(f"{option} {path}: is a directory; give a file name inside it")
    if path.exists() and not os.access(path, os.W_OK):
        raise PcamflowError(f"{option} {path}: file is not writable (permission denied)")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise PcamflowError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PcamflowError(f"{option} {path}: cannot write in {folder} (permission denied)")


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse an output folder that cannot be made or written, before the work that fills it:
    a file at `path` or where a parent folder should be, or a folder without write permission."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PcamflowError(f"{option} {path}: is a file, not a folder")
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise PcamflowError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PcamflowError(f"{option} {path}: cannot write in {folder} (permission denied)")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
