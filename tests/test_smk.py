"""Rule scripts (pcamflow.smk.run_script): an unexpected failure explains itself."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from pcamflow.smk import run_script


def _run(tmp_path, main) -> tuple[int, str, str]:
    """(exit code, log text, terminal text) of a rule script whose body is `main`."""
    log = tmp_path / "rule.log"
    with pytest.raises(SystemExit) as stop:
        run_script(SimpleNamespace(log=[str(log)], rule="demo"), main)
    return stop.value.code, log.read_text(), ""


def test_an_unexpected_error_puts_the_traceback_in_the_log_and_one_line_on_the_terminal(tmp_path, capsys):
    def broken(smk):
        {}["missing"]  # a bug, not a user mistake

    code, log, _ = _run(tmp_path, broken)
    terminal = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in log and "KeyError: 'missing'" in log
    assert terminal.count("\n") == 1 and "Traceback" not in terminal
    assert (
        terminal.startswith("pcamflow: error: unexpected KeyError: 'missing'")
        and str(tmp_path / "rule.log") in terminal
    )


def test_a_full_disk_says_so_and_names_the_file(tmp_path, capsys):
    def write_to_full_disk(smk):
        with open("/dev/full", "w") as fh:  # every write fails with ENOSPC, as on a full disk
            fh.write("x" * 10_000)

    code, log, _ = _run(tmp_path, write_to_full_disk)
    terminal = capsys.readouterr().err
    assert code == 1 and terminal.count("\n") == 1
    assert terminal.startswith("pcamflow: error: no space left on device writing /dev/full"), terminal
    assert "Traceback" in log


def test_the_root_logger_is_not_left_on_the_closed_rule_log(tmp_path, capfd):
    """A caller that goes on after a rule script (a test, the training job's supervisor) still logs."""
    before = logging.root.handlers[:]

    def logs(smk):
        logging.getLogger("pcamflow.demo").info("into the rule log")

    run_script(SimpleNamespace(log=[str(tmp_path / "rule.log")], rule="demo"), logs)
    logging.getLogger("pcamflow.demo").warning("after the script")
    assert logging.root.handlers == before
    assert "into the rule log" in (tmp_path / "rule.log").read_text()
    assert "Logging error" not in capfd.readouterr().err
