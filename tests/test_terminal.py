"""A quiet terminal (pcamflow.terminal): one line per finished job, and next commands that run as printed."""

from __future__ import annotations

import logging
import sys

import pytest
from snakemake_interface_logger_plugins.common import LogEvent

from pcamflow import terminal


def record(msg, event=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("snakemake.logging", logging.INFO, __file__, 0, msg, (), None)
    if event is not None:
        rec.event = event
    rec.__dict__.update(extra)
    return rec


def test_a_finished_job_is_one_progress_line_that_names_it_and_other_messages_pass():
    keep = terminal.OneLinePerJob()
    # what Snakemake logs around one job: its rule block, selection, start, finish, progress
    wildcards = {"model": "cnn", "lr": "0.003", "seed": "42"}
    block = record(
        " Rule: train, Jobid: 7", LogEvent.JOB_INFO, jobid=7, rule_name="train", wildcards=wildcards
    )
    per_job = [
        block,
        record("Select jobs to execute..."),
        record("Execute 1 jobs...", LogEvent.JOB_STARTED, jobs=[7]),
        record("Finished jobid: 7 (Rule: train)", LogEvent.JOB_FINISHED, job_id=7),
    ]
    assert [keep.filter(r) for r in per_job] == [False] * 4
    progress = record(None, LogEvent.PROGRESS, done=3, total=12)
    assert keep.filter(progress)
    line = progress.getMessage()
    assert getattr(progress, "event", None) is None and "\n" not in line
    assert line.endswith("] 3 of 12 steps (25%) done: train model~cnn/lr~0.003/seed~42"), line
    # the job-count table goes; warnings, errors and the rest stay
    assert not keep.filter(record("Job stats: ...", LogEvent.RUN_INFO, stats={}))
    assert keep.filter(record("Error in rule train:", LogEvent.JOB_ERROR))
    assert keep.filter(record("Provided cores: 2"))


def test_the_filter_is_attached_to_snakemakes_terminal_only_for_runs_that_execute_jobs():
    class Settings:
        dryrun, verbose = False, False

    class Workflow:
        output_settings, is_main_process = Settings(), True

    logger = logging.getLogger("snakemake.logging")
    handler = logging.StreamHandler()
    handler.name = terminal.STREAM_HANDLER
    logger.addHandler(handler)
    try:
        Settings.dryrun = True  # a dry run shows the plan: its rule blocks are what it is for
        assert not terminal.quiet_terminal(Workflow())
        Settings.dryrun = False
        assert terminal.quiet_terminal(Workflow()) and terminal.quiet_terminal(Workflow())
        assert sum(isinstance(f, terminal.OneLinePerJob) for f in handler.filters) == 1  # once
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def env_bin(tmp_path, monkeypatch):
    """This interpreter's environment as a venv below the working directory."""
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("snakemake", "pcamflow"):
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(0o755)
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.chdir(tmp_path)
    return venv / "bin"


def test_next_commands_name_the_venv_when_it_is_not_active(env_bin, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert (
        terminal.next_command("snakemake", "--report", "report.html")
        == ".venv/bin/snakemake --report report.html"
    )
    (env_bin.parents[1] / "elsewhere").mkdir()
    monkeypatch.chdir(env_bin.parents[1] / "elsewhere")  # the venv is not below: its absolute path
    assert terminal.next_command("pcamflow", "status") == f"{env_bin}/pcamflow status"


def test_next_commands_are_bare_in_an_active_venv(env_bin, monkeypatch):
    monkeypatch.setenv("PATH", f"{env_bin}:/usr/bin:/bin")
    assert terminal.next_command("pcamflow", "status") == "pcamflow status"
