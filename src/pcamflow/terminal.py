"""A quiet terminal: a run prints one line per finished job, then the end-of-run summary.

Snakemake prints, per job, its rule block (inputs, outputs and the reason: thousands of characters
for the last jobs of a sweep), 'Select jobs to execute...', 'Execute N jobs...', the time, 'Finished
jobid ...' and 'n of m steps done', and before the run a table of job counts; its quiet settings
drop all progress with them. `quiet_terminal` filters Snakemake's terminal handler alone (its log
under .snakemake/log/ keeps everything) down to one line per finished job:

    [15:45:41] 4 of 24 steps (17%) done: audit split~test

Errors, warnings and every other message pass as they are; dry runs and `--verbose` are left alone.
The next commands a run prints are written so they run as printed (`next_command`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

from snakemake_interface_logger_plugins.common import LogEvent

STREAM_HANDLER = "DefaultStreamHandler"  # the name Snakemake gives its terminal handler
DROPPED_EVENTS = {LogEvent.JOB_INFO, LogEvent.JOB_STARTED, LogEvent.RUN_INFO, LogEvent.SHELLCMD}
DROPPED_MESSAGES = {
    "Select jobs to execute...",
    "DAG of jobs will be updated after completion.",
    "Updating checkpoint dependencies.",
}


class OneLinePerJob(logging.Filter):
    """Keeps Snakemake's progress line, names the job that finished in it, and drops the rest of
    the per-job messages (a filter may rewrite the record it passes on)."""

    def __init__(self):
        super().__init__()
        self.jobs: dict[int, str] = {}  # job id -> 'rule wildcards', from the job's rule block
        self.finished: list[str] = []  # finished since the last progress line

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event == LogEvent.JOB_INFO:
            self.jobs[record.jobid] = job_name(record.rule_name, record.wildcards or {})
        if event == LogEvent.JOB_FINISHED:
            self.finished.append(self.jobs.get(record.job_id, record.getMessage()))
            return False
        if event == LogEvent.PROGRESS:
            record.event = None  # printed as its message by Snakemake's formatter
            record.msg = progress_line(record.done, record.total, self.finished)
            record.args = ()
            self.finished = []
            return True
        return event not in DROPPED_EVENTS and record.getMessage() not in DROPPED_MESSAGES


def job_name(rule: str, wildcards: dict) -> str:
    """'train model~cnn/lr~0.003/batch_size~64/optimizer~adam/seed~42' (the rule alone without wildcards)."""
    return " ".join([rule, "/".join(f"{key}~{value}" for key, value in wildcards.items())]).strip()


def progress_line(done: int, total: int, finished: list[str]) -> str:
    percent = f"{100 * done / total:.0f}%" if total else "100%"
    return f"[{time.strftime('%H:%M:%S')}] {done} of {total} steps ({percent}) done: {', '.join(finished)}"


def quiet_terminal(workflow) -> bool:
    """Attach OneLinePerJob to Snakemake's terminal handler for a run that executes jobs (not a dry
    run, not --verbose, not inside a job); returns whether it did."""
    settings = workflow.output_settings  # known while the Snakefile is read (workflow.dryrun is not yet)
    if settings is None or settings.dryrun or settings.verbose or not workflow.is_main_process:
        return False
    handlers = [h for h in logging.getLogger("snakemake.logging").handlers if h.name == STREAM_HANDLER]
    for handler in handlers:
        if not any(isinstance(f, OneLinePerJob) for f in handler.filters):
            handler.addFilter(OneLinePerJob())
    return bool(handlers)


def next_command(name: str, *args: str) -> str:
    """A command of this environment as the user can type it: bare when `name` on PATH is this
    environment's (an active virtualenv), else its path (relative when below the working directory)."""
    own = Path(sys.prefix) / "bin" / name
    found = shutil.which(name)
    if found and own.exists() and os.path.samefile(found, own):
        program = name
    elif own.exists():
        program = os.path.relpath(own) if own.resolve().is_relative_to(Path.cwd().resolve()) else str(own)
    else:
        program = name
    return " ".join([program, *args])
