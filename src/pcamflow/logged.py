"""Run a job's main with its stderr and logging in a log file; errors end it with one line.

Rule scripts use it through pcamflow.smk.run_script; the workflow's training child
(pcamflow.training.job) uses it directly.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable

from pcamflow.errors import PcamflowError, Preempted, disk_full_line, first_line


def run_logged(log_path: str | None, main: Callable[[], None]) -> None:
    """Run `main()` with stderr and logging sent to log_path (when given).

    A PcamflowError exits 1 with one line. A Preempted run (checkpointed on SIGTERM/SIGUSR1) exits
    EXIT_PREEMPTED with one line, so Snakemake's retry resumes it. Any other exception writes its
    traceback to the log (while stderr still goes there) and one line to the terminal; a full disk
    says so and names the file.
    """
    terminal, root_handlers = sys.stderr, logging.root.handlers[:]
    with contextlib.ExitStack() as stack:
        if log_path:
            log_file = stack.enter_context(open(log_path, "a", buffering=1))
            sys.stderr = log_file
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
        )
        try:
            main()
        except PcamflowError as err:
            _exit_with_line(f"pcamflow: error: {err}", 1, terminal)
        except Preempted as stop:
            _exit_with_line(f"pcamflow: {stop}", stop.exit_code, terminal)
        except Exception as exc:  # noqa: BLE001 - a bug or an environment failure: explain it, then exit
            traceback.print_exc(file=sys.stderr)  # into the log, before stderr is restored
            _exit_with_line(
                f"pcamflow: error: {unexpected_line(exc)}{_see(log_path)}", 1, terminal, log=False
            )
        finally:
            sys.stderr = terminal
            logging.root.handlers[:] = root_handlers  # not left on the log file this block closes


def unexpected_line(exc: BaseException) -> str:
    """One line for an exception that is no user mistake: a full disk named as such, else its type."""
    return disk_full_line(exc) or f"unexpected {type(exc).__name__}: {first_line(exc)}"


def _see(log_path: str | None) -> str:
    return f" (traceback in {log_path})" if log_path else ""


def _exit_with_line(line: str, exit_code: int, terminal, log: bool = True) -> None:
    """Print `line` to the log (sys.stderr) and to the terminal, then exit with `exit_code`."""
    if log:
        print(line, file=sys.stderr)
    if sys.stderr is not terminal or not log:
        print(line, file=terminal)
    sys.exit(exit_code)
