"""Glue for workflow_scripts/: logs to the rule's log file, user errors as one clear line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable

from .errors import PcamflowError


def run_script(snakemake, main: Callable[[object], None]) -> None:
    """Run a rule's script: stderr and logging go to snakemake.log[0]; a PcamflowError exits 1."""
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
            line = f"pcamflow: error: {err}"
            print(line, file=sys.stderr)
            if sys.stderr is not terminal:
                print(line, file=terminal)
            sys.exit(1)
        finally:
            sys.stderr = terminal
