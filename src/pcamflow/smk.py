"""Glue for workflow_scripts/: logs to the rule's log file, user errors as one clear line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable

from pcamflow.errors import PcamflowError, Preempted


def run_script(snakemake, main: Callable[[object], None]) -> None:
    """Run a rule's script: stderr and logging go to snakemake.log[0].

    A PcamflowError exits 1 with one line. A Preempted run (checkpointed on SIGTERM/SIGUSR1) exits
    EXIT_PREEMPTED with one line, so Snakemake's retry resumes it.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    terminal = sys.stderr
    with contextlib.ExitStack() as stack:
        if log_path:
            log_file = stack.enter_context(open(log_path, "a", buffering=1))
            sys.stderr = log_file
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True
        )
        try:
            main(snakemake)
        except PcamflowError as err:
            _exit_with_line(f"pcamflow: error: {err}", 1, terminal)
        except Preempted as stop:
            _exit_with_line(f"pcamflow: {stop}", stop.exit_code, terminal)
        finally:
            sys.stderr = terminal


def _exit_with_line(line: str, exit_code: int, terminal) -> None:
    """Print `line` to the log (sys.stderr) and to the terminal, then exit with `exit_code`."""
    print(line, file=sys.stderr)
    if sys.stderr is not terminal:
        print(line, file=terminal)
    sys.exit(exit_code)
