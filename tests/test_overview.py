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


def test_a_failed_or_interrupted_run_shows_only_what_it_wrote_itself(tmp_path):
    """After Ctrl-C in a run of a grown grid, the last run's overview ("the sweep is done") is stale."""
    txt, failed, runs = tmp_path / "overview.txt", tmp_path / "failed_runs.txt", tmp_path / "runs.csv"
    runs.write_text("x")
    txt.write_text("pcamflow: the sweep is done.\n")
    failed.write_text("results/runs/model~mlp/lr~1/seed~1/run.json\n")
    for path in (runs, txt, failed):
        os.utime(path, (100, 100))
    assert overview.end_of_run_message(txt, failed, [runs], written_since=101) == ""
    message = overview.end_of_run_message(txt, failed, [runs], written_since=100)  # written by this run
    assert message.startswith("pcamflow: the sweep is done.\n")


# ---- the first page tells the course journal's story: what the audit found, what prepare dropped ----


def test_the_first_page_lists_the_planted_faults_found_and_dropped(tmp_path):
    from pcamflow.constants import FAULTS
    from pcamflow.data.audit import audit_split, cross_split_duplicates
    from pcamflow.data.prepare import prepare_store
    from pcamflow.data.rawdata import split_paths
    from pcamflow.data.synthesize import write_synthetic

    raw = tmp_path / "raw"
    planted = write_synthetic(raw, n_train=200, n_valid=100, n_test=100, seed=3, poison=True)
    paths = {split: split_paths(raw, split) for split in planted["splits"]}
    results = {
        s: audit_split(*p, block_size=64, black_max=10, white_min=245, split=s) for s, p in paths.items()
    }
    audits = {s: r.report for s, r in results.items()}
    cross = cross_split_duplicates({s: r.hashes for s, r in results.items()}, audits)
    stats = prepare_store(
        paths,
        tmp_path / "store",
        audits=audits,
        cross=cross,
        drop_black_white_from=["train"],
        drop_cross_split_duplicates=True,
        block_size=64,
    )
    train = planted["splits"]["train"]
    found = overview.audit_finding(audits["train"])
    assert found.startswith("200 tiles, float32 (4x the uint8 size), ")
    for fault in FAULTS:
        assert f"{len(train[fault])} {fault.replace('_', '-')}" in found, (fault, found)
    within = [d for d in planted["within_split_duplicates"] if d["split"] == "train"]
    assert f"{2 * len(within)} tiles in {len(within)} duplicate groups" in found
    dropped = overview.prepare_action(audits["train"], stats["counts"]["train"])
    copies = len(planted["cross_split_duplicates"])
    kept = 200 - len(train["black"]) - len(train["white"]) - copies
    assert dropped.startswith(
        f"prepare dropped {len(train['black'])} black, {len(train['white'])} white, {copies} copies of "
        f"valid/test tiles; kept {kept} of 200; repaired "
        f"{len(train['nan']) + len(train['inf']) + len(train['out_of_range'])} (NaN/inf -> 0"
    ), dropped
    assert overview.prepare_action(audits["test"], stats["counts"]["test"]).startswith(
        "prepare kept all 100 tiles"
    )
