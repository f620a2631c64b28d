"""Glue for workflow_scripts/: logs to the rule's log file, user errors as one clear line."""

from __future__ import annotations

from collections.abc import Callable

from pcamflow.logged import run_logged


def run_script(snakemake, main: Callable[[object], None]) -> None:
    """Run a rule's script, `main(snakemake)`, with stderr and logging in snakemake.log[0]
    (pcamflow.logged.run_logged: one line per error, exit 75 when preempted)."""
    run_logged(snakemake.log[0] if len(snakemake.log) else None, lambda: main(snakemake))
