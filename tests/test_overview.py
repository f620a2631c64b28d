"""The overview's pieces: RST that renders whatever a failure reason holds, and the end-of-run message
that never shows a stale overview."""

import os

from docutils.core import publish_parts

from pcamflow.evaluation import overview


def test_the_rst_table_renders_reasons_with_markup_characters_as_plain_text():
    row = {"what": "", "result": "failed", "details": "runs.csv"}
    reason = "RuntimeError: *bad* `thing` | x_1 [a] <b>: c\\\\d"
    rst = overview.rst_table([dict(row, beside=reason)]) + "\n.. _runs.csv: javascript:void(0)\n"
    html = publish_parts(rst, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})
    assert "RuntimeError: *bad* `thing` | x_1 [a] &lt;b&gt;: c\\\\d" in html["body"]
    assert "pcamflow-overview" in html["body"]


def test_the_end_of_run_message_shows_the_overview_only_while_it_is_current(tmp_path):
    txt, failed, runs = tmp_path / "overview.txt", tmp_path / "failed_runs.txt", tmp_path / "runs.csv"
    assert overview.end_of_run_message(txt, failed, [runs]) == ""
    runs.write_text("x")
    txt.write_text("pcamflow: the sweep is done.\n")
    failed.write_text("")
    os.utime(runs, (1, 1))
    message = overview.end_of_run_message(txt, failed, [runs])
    assert message.startswith("pcamflow: the sweep is done.\n") and "FAILED" not in message
    # then the next commands
    assert message.endswith("  report     snakemake --report report.html\n  status     pcamflow status\n")
    # the summaries were made again (another target), the overview not: name the failed runs instead
    os.utime(txt, (0, 0))
    assert overview.end_of_run_message(txt, failed, [runs]) == ""
    failed.write_text("results/runs/model~mlp/lr~1/seed~1/run.json\n")
    message = overview.end_of_run_message(txt, failed, [runs])
    assert "1 run(s) FAILED" in message and "model~mlp/lr~1/seed~1/run.json" in message
    assert f"snakemake --forcerun $(cat {failed})" in message
