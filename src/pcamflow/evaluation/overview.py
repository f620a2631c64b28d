"""The answer first: one table of the champion, its test metrics with intervals beside the baselines,
the failed runs and the data audit's findings, for the report's first page (report/workflow.rst
includes overview.rst) and as the few lines a finished run prints (overview.txt)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pcamflow.constants import FAULTS
from pcamflow.evaluation.evaluate import AT_HALF, AT_VALIDATION, MEAN
from pcamflow.io import read_json, write_text
from pcamflow.training.runstatus import describe_failure

# (metric key in evaluate.json, label, threshold it is read at)
TEST_METRICS = (
    ("roc_auc", "AUC", AT_VALIDATION),
    ("f2", "F2", AT_VALIDATION),
    ("pr_auc", "PR AUC", AT_VALIDATION),
    ("recall", "recall", AT_VALIDATION),
    ("accuracy", "accuracy", AT_VALIDATION),
)
CHAMPION_PREDICTORS = ("champion", "champion without TTA")
MAX_LISTED_FAILURES = 20  # the report and terminal name at most this many failed runs, then count the rest
STATUS_COMMAND = "pcamflow status"
REPORT_COMMAND = "snakemake --report report.html"


def champion_member(evaluation: Mapping) -> str:
    """The evaluate.json member that stands for the champion: the mean over seeds, or its one seed."""
    members = evaluation["metrics"]["champion"]
    return MEAN if MEAN in members else f"seed {evaluation['deploy']['seed']}"


def interval(cell: Mapping | None) -> str:
    """'0.9712 [0.9534, 0.9861]' (or the reason a metric is undefined)."""
    if not cell or cell.get("value") is None:
        return f"undefined ({cell.get('undefined', 'no value')})" if cell else "n/a"
    text = f"{cell['value']:.4f}"
    if cell.get("ci_low") is not None and cell.get("ci_high") is not None:
        text += f" [{cell['ci_low']:.4f}, {cell['ci_high']:.4f}]"
    return text


def baselines(evaluation: Mapping, metric: str) -> str:
    """'majority class (negative in train) 0.5000; always positive 0.5000' for one metric, at 0.5."""
    parts = []
    for predictor, members in evaluation["metrics"].items():
        if predictor in CHAMPION_PREDICTORS:
            continue
        for cells in members.values():
            value = cells.get(AT_HALF, {}).get(metric, {}).get("value")
            parts.append(f"{predictor} {'n/a' if value is None else f'{value:.4f}'}")
    return "; ".join(parts)


def audit_finding(audit: Mapping) -> str:
    """One line per split: tiles, dtype, and every fault, duplicate and imbalance the audit found."""
    found = [
        f"{audit['faults'][fault]['tiles']} {fault.replace('_', '-')}"
        for fault in FAULTS
        if audit["faults"][fault]["tiles"]
    ]
    if audit["duplicates"]["n_groups"]:
        found.append(
            f"{audit['duplicates']['n_tiles']} tiles in {audit['duplicates']['n_groups']} duplicate groups"
        )
    balance = audit["class_balance"]["positive_fraction"]
    text = f"{audit['n_tiles']} tiles, {audit['dtype']['x']}, {balance:.1%} positive"
    return text + ("; " + ", ".join(found) if found else "; no faults")


def overview_rows(
    champion: Mapping,
    evaluation: Mapping,
    runs: pd.DataFrame,
    audits: Mapping[str, Mapping],
    cross: Mapping,
    failed_list: str = "results/summary/failed_runs.txt",
) -> list[dict]:
    """The overview table: one dict per row with `what`, `result`, `beside` and `details` (the report
    result that holds the details, by file name)."""
    ci = evaluation["bootstrap"]["ci"]
    member = champion_member(evaluation)
    cells = evaluation["metrics"]["champion"][member]
    n_seeds = len(evaluation["seeds"])
    seeds_text = f"mean of {n_seeds} seeds" if member == MEAN else f"seed {evaluation['deploy']['seed']}"
    rows = [
        {
            "what": "champion (chosen on validation)",
            "result": champion["id"],
            "beside": f"mean {champion['metric']} {champion['mean']:.4f} over {champion['n_seeds']} seed(s)",
            "details": "champion.json",
        }
    ]
    for metric, label, threshold in TEST_METRICS:
        where = "" if metric.endswith("auc") else " at the validation threshold"
        rows.append(
            {
                "what": f"test {label} ({seeds_text}{where}; {ci:.0%} interval)",
                "result": interval(cells[threshold].get(metric)),
                "beside": "baselines: " + baselines(evaluation, metric),
                "details": "evaluate.html",
            }
        )
    failed = runs.loc[runs["status"] == "failed"]
    rows.append(
        {
            "what": "failed runs",
            "result": f"{len(failed)} of {len(runs)}",
            "beside": (
                f"left out of the results; retry them: {retry_command(failed_list)}"
                if len(failed)
                else "every run trained"
            ),
            "details": "runs.csv",
        }
    )
    for line in failed_run_lines(failed):
        rows.append({"what": "", "result": "failed", "beside": line, "details": "runs.csv"})
    for split, audit in audits.items():
        rows.append(
            {
                "what": f"data audit: {split}",
                "result": audit_finding(audit),
                "beside": "",
                "details": f"{split}.json",
            }
        )
    shared = ", ".join(f"{pair} {n}" for pair, n in cross.get("counts", {}).items() if n)
    rows.append(
        {
            "what": "data audit: tiles shared between splits",
            "result": f"{cross.get('n_pairs', 0)} pairs" + (f" ({shared})" if shared else ""),
            "beside": "",
            "details": "cross_split.json",
        }
    )
    return rows


def failed_run_lines(failed: pd.DataFrame) -> list[str]:
    """'<run dir>: <reason> (N attempts)' per failed run, at most MAX_LISTED_FAILURES, then a count; a
    failure that is not the run's own says what failed instead (pcamflow.training.runstatus)."""
    lines = [
        f"{row['run_dir']}: {describe_failure(_failure(row))} ({_attempts(row['attempts'])})"
        for _, row in failed.head(MAX_LISTED_FAILURES).iterrows()
    ]
    if len(failed) > MAX_LISTED_FAILURES:
        lines.append(f"... and {len(failed) - MAX_LISTED_FAILURES} more (runs.csv)")
    return lines


def _failure(row) -> dict:
    """A runs.csv row's failure as run.json records it (runs.csv made before categories has none)."""
    category = row.get("failure_category")
    return {"reason": row["failure_reason"], "category": None if pd.isna(category) else category}


def _attempts(value) -> str:
    return "attempts unknown" if pd.isna(value) else f"{int(value)} attempt{'s' if int(value) != 1 else ''}"


def retry_command(failed_list: str | os.PathLike) -> str:
    return f"snakemake --forcerun $(cat {failed_list})"


# ---------------------------------------------------------------- the two renderings


def rst_table(rows: Sequence[Mapping]) -> str:
    """The rows as an RST list-table whose details cells link to the report's results (report/workflow.rst
    defines a link target for every result file name)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :class: pcamflow-overview",
        "",
        "   * -",
        "     - result",
        "     - beside it",
        "     - details",
    ]
    for row in rows:
        lines += [
            f"   * - {_rst(row['what'])}",
            f"     - {_rst(row['result'])}",
            f"     - {_rst(row['beside'])}",
            f"     - `{row['details']}`_",
        ]
    return "\n".join(lines) + "\n"


def _rst(text: str) -> str:
    """Plain text as RST inline text: markup characters escaped."""
    out = str(text)
    for char in "\\`*_|[]<>:":
        out = out.replace(char, "\\" + char)
    return out


def terminal_lines(
    rows: Sequence[Mapping], evaluation: Mapping, failed_list: str, failed: Sequence[str]
) -> list[str]:
    """The few lines a finished run ends with: champion, test AUC and F2 with intervals, failed runs."""
    cells = evaluation["metrics"]["champion"][champion_member(evaluation)][AT_VALIDATION]
    ci = f"{evaluation['bootstrap']['ci']:.0%} bootstrap interval"
    champion = rows[0]
    lines = [
        "",
        "pcamflow: the sweep is done.",
        f"  champion   {champion['result']} ({champion['beside']})",
        f"  test AUC   {interval(cells.get('roc_auc'))}  ({ci})",
        f"  test F2    {interval(cells.get('f2'))}  (at the threshold chosen on validation)",
    ]
    if failed:
        lines.append(
            f"  FAILED     {len(failed)} run(s), left out of the results (runs.csv gives the reasons):"
        )
        lines += [f"             {line}" for line in failed]
        lines.append(f"  retry them {retry_command(failed_list)}  (with the same --configfile/--profile)")
    lines += [f"  report     {REPORT_COMMAND}", f"  status     {STATUS_COMMAND}", ""]
    return lines


def write_overview(
    champion_json, evaluate_json, runs_csv, audit_jsons, cross_json, failed_list, out
) -> list[dict]:
    """overview.rst (the report's first page), overview.html (the same table as a report result) and
    overview.txt (the terminal's last lines). `audit_jsons` maps split -> audit JSON; `out` maps
    rst, html, txt to paths."""
    from pcamflow.plots import html_table

    champion, evaluation = read_json(champion_json), read_json(evaluate_json)
    runs = pd.read_csv(runs_csv)
    audits = {split: read_json(path) for split, path in audit_jsons.items()}
    rows = overview_rows(champion, evaluation, runs, audits, read_json(cross_json), str(failed_list))
    failed = failed_run_lines(runs.loc[runs["status"] == "failed"])
    write_text(out["rst"], rst_table(rows))
    html_table(
        pd.DataFrame(rows).rename(columns={"what": "", "beside": "beside it"}),
        "The answer first: champion, test metrics, failed runs, data audit",
        out["html"],
        notes=[f"Retry only the failed runs: {retry_command(failed_list)}"] if failed else [],
    )
    write_text(out["txt"], "\n".join(terminal_lines(rows, evaluation, str(failed_list), failed)))
    return rows


def end_of_run_message(
    overview_txt: str | os.PathLike, failed_list: str | os.PathLike, inputs: Sequence
) -> str:
    """What a finished Snakemake run prints last: overview.txt when it is current (not older than the
    summaries it was made from), else the failed runs the aggregation found, else nothing."""
    overview_txt, failed_list = Path(overview_txt), Path(failed_list)
    if _current(overview_txt, inputs):
        return overview_txt.read_text()
    if _current(failed_list, []) and failed_list.read_text().strip():
        failed = failed_list.read_text().split()
        listed = "\n".join(f"             {path}" for path in failed[:MAX_LISTED_FAILURES])
        return (
            f"\npcamflow: {len(failed)} run(s) FAILED on every attempt (runs.csv gives the reasons):\n{listed}\n"
            f"  retry them {retry_command(failed_list)}  (with the same --configfile/--profile)\n"
            f"  status     {STATUS_COMMAND}\n"
        )
    return ""


def _current(path: Path, inputs: Sequence) -> bool:
    if not path.exists():
        return False
    mtime = path.stat().st_mtime
    return all(not Path(p).exists() or Path(p).stat().st_mtime <= mtime for p in inputs)
