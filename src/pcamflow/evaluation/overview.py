"""The answer first: one table of the champion, its test metrics with intervals beside the baselines,
the failed runs, what the data audit found and prepare dropped, and the partitions the throughput
study skipped, for the report's first page (report/workflow.rst includes overview.rst) and as the
few lines a finished run prints (overview.txt, then the next commands: `end_of_run_message`)."""

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
DROPPED = {
    "black": "black",
    "white": "white",
    "cross_split_duplicate": "copies of valid/test tiles",
    "within_split_duplicate": "repeated copies within the split",
}


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
    size = audit["size"]["ratio_to_uint8"]
    stored = f"{audit['dtype']['x']}" + (f" ({size:g}x the uint8 size)" if size >= 1.5 else "")
    text = f"{audit['n_tiles']} tiles, {stored}, {balance:.1%} positive"
    return text + ("; found " + ", ".join(found) if found else "; no faults found")


def prepare_action(audit: Mapping, counts: Mapping) -> str:
    """What prepare did with one split: the tiles it dropped and why, the tiles it repaired."""
    dropped = [f"{n} {DROPPED.get(reason, reason)}" for reason, n in counts["dropped"].items() if n]
    repaired = sum(audit["faults"][fault]["tiles"] for fault in ("nan", "inf", "out_of_range"))
    parts = [
        f"prepare dropped {', '.join(dropped)}; kept {counts['kept']} of {counts['raw']}"
        if dropped
        else f"prepare kept all {counts['raw']} tiles"
    ]
    if repaired:
        parts.append(f"repaired {repaired} (NaN/inf -> 0, values clipped to 0..255)")
    return "; ".join(parts)


def reading_notes(champion: Mapping, evaluation: Mapping) -> list[str]:
    """How to read the table: what val_auc and the validation threshold are, why the champion is
    chosen as it is, and why test F2 at the validation threshold differs from F2 at 0.5."""
    metric = champion["metric"]
    other = "val_auc" if metric == "val_f2" else "val_f2"
    cells = evaluation["metrics"]["champion"][champion_member(evaluation)]
    f2_val, f2_half = (cells[t].get("f2", {}).get("value") for t in (AT_VALIDATION, AT_HALF))
    thresholds = [t["threshold"] for t in evaluation["thresholds"]]
    span = f"{min(thresholds):.3f}" + (f" to {max(thresholds):.3f}" if len(thresholds) > 1 else "")
    by_metric = {
        "val_auc": "val_auc, the area under the ROC curve on the validation split (the chance that a "
        "random tumour tile scores above a random normal one; 0.5 is guessing), ranks tiles without a "
        "threshold",
        "val_f2": "val_f2, F2 on the validation split at 0.5 (recall weighted four times precision: a "
        "missed tumour costs more than a false alarm)",
    }
    notes = [
        f"The champion is the grid point with the best mean {metric} over its seeds, each run at its "
        f"best epoch; {by_metric.get(metric, metric)}. It is chosen on validation only, so test is "
        f"used once, for the numbers below. To choose by {other} instead, set "
        f"champion.metric: {other} in the config.",
        f"The validation threshold is the decision threshold each seed's model gets on validation so "
        f"that it finds at least {evaluation['target_recall']:.0%} of the validation tumours "
        f"(evaluate.target_recall): {span} here.",
    ]
    if f2_val is not None and f2_half is not None:
        notes.append(
            f"Test F2 is {f2_val:.4f} at that threshold and {f2_half:.4f} at 0.5 (evaluate.csv): the "
            "threshold is set for recall on validation, not for F2 on test, and test is not "
            "validation; the validation threshold is the one chosen without looking at test."
        )
    return notes


def overview_rows(
    champion: Mapping,
    evaluation: Mapping,
    runs: pd.DataFrame,
    audits: Mapping[str, Mapping],
    cross: Mapping,
    failed_list: str = "results/summary/failed_runs.txt",
    prepared: Mapping | None = None,
    skipped: Mapping[str, str] | None = None,
) -> list[dict]:
    """The overview table: one dict per row with `what`, `result`, `beside` and `details` (the report
    result that holds the details, by file name). `prepared`: the store's stats.json (what prepare
    kept and dropped); `skipped`: partition -> why the throughput study did not measure it."""
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
            "details": "metrics_avg.html",
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
    counts = (prepared or {}).get("counts", {})
    for split, audit in audits.items():
        rows.append(
            {
                "what": f"data audit: {split}",
                "result": audit_finding(audit),
                "beside": prepare_action(audit, counts[split]) if split in counts else "",
                "details": f"{split}.png",
            }
        )
    shared = ", ".join(f"{pair} {n}" for pair, n in cross.get("counts", {}).items() if n)
    rows.append(
        {
            "what": "data audit: tiles shared between splits",
            "result": f"{cross.get('n_pairs', 0)} pairs" + (f" ({shared})" if shared else ""),
            "beside": "prepare dropped the train copies (leakage); valid and test stay as published"
            if cross.get("n_pairs")
            and (prepared or {}).get("settings", {}).get("drop_cross_split_duplicates")
            else "",
            "details": "cross_split.json",
        }
    )
    for partition, why in (skipped or {}).items():
        rows.append(
            {
                "what": f"throughput: {partition}",
                "result": "skipped, not measured",
                "beside": why,
                "details": "throughput_scaling.png",
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


def plain_command(name: str, *args: str) -> str:
    return " ".join([name, *args])


def retry_command(failed_list: str | os.PathLike, command=plain_command) -> str:
    return command("snakemake", "--forcerun", f"$(cat {failed_list})")


# ---------------------------------------------------------------- the two renderings


# A details link opens the report result it names at once: an image or HTML table in the report's
# own viewer, any other file (JSON, CSV) as text. `results` and `app` are the globals of Snakemake's
# report (its React app); the code has no whitespace and no '>' (an RST embedded URI keeps neither).
OPEN_RESULT = (
    "javascript:(function(n,p,r,v){{p=Object.keys(results).filter(function(k){{return(k==n||"
    "k.slice(-n.length-1)=='/'+n)}})[0];r=results[p];v={{navbarMode:'resultinfo',resultPath:p}};"
    "if(r.mime_type.indexOf('image/')==0){{v.content='img';v.contentPath=r.data_uri;app.setView(v)}}"
    "else{{if(r.mime_type=='text/html'){{v.content='html';v.contentPath=r.data_uri;app.setView(v)}}"
    "else{{fetch(r.data_uri).then(function(x){{return(x.text())}}).then(function(t){{v.content='text';"
    "v.contentText=t;app.setView(v)}})}}}}}})('{name}')"
)


def rst_table(rows: Sequence[Mapping], notes: Sequence[str] = ()) -> str:
    """The rows as an RST list-table whose details cells open the report's results, then the notes."""
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
            f"     - `{row['details']} <{OPEN_RESULT.format(name=row['details'])}>`__",
        ]
    lines += [line for note in notes for line in ("", _rst(note))]
    return "\n".join(lines) + "\n"


def _rst(text: str) -> str:
    """Plain text as RST inline text: markup characters escaped."""
    out = str(text)
    for char in "\\`*_|[]<>:":
        out = out.replace(char, "\\" + char)
    return out


def terminal_lines(
    rows: Sequence[Mapping],
    evaluation: Mapping,
    failed_list: str,
    failed: Sequence[str],
    skipped: Mapping[str, str] | None = None,
) -> list[str]:
    """The few lines a finished run ends with: champion, test AUC and F2 with intervals, what the data
    audit found and prepare dropped, failed runs, skipped partitions (the commands follow when printed)."""
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
    data = next((row for row in rows if row["what"].startswith("data audit: train")), None)
    if data:  # the other splits are on the report's first page
        lines.append(f"  data       train: {data['result']}")
        lines += [f"             {data['beside']}"] if data["beside"] else []
    if failed:
        lines.append(
            f"  FAILED     {len(failed)} run(s), left out of the results (runs.csv gives the reasons):"
        )
        lines += [f"             {line}" for line in failed]
    for partition, why in (skipped or {}).items():
        lines.append(f"  skipped    throughput on {partition}: {why}")
    return lines


def next_commands(failed_list: str | os.PathLike, failed: bool, command=None) -> list[str]:
    """The commands to run next, as `command(name, *args)` writes them (pcamflow.terminal.next_command
    in a run: so they run as printed)."""
    command = command or plain_command
    lines = []
    if failed:
        lines.append(
            f"  retry them {retry_command(failed_list, command)}  (with the same --configfile/--profile)"
        )
    lines.append(f"  report     {command('snakemake', '--report', 'report.html')}")
    lines.append(f"  status     {command('pcamflow', 'status')}")
    return lines


def write_overview(
    champion_json,
    evaluate_json,
    runs_csv,
    audit_jsons,
    cross_json,
    failed_list,
    out,
    prepared_stats=None,
    skipped: Mapping[str, str] | None = None,
) -> list[dict]:
    """overview.rst (the report's first page), overview.html (the same table as a report result) and
    overview.txt (the terminal's last lines). `audit_jsons` maps split -> audit JSON; `out` maps
    rst, html, txt to paths; `prepared_stats` is the store's stats.json, `skipped` maps a partition
    the throughput study did not measure to the reason (both optional)."""
    from pcamflow.plots import html_table

    champion, evaluation = read_json(champion_json), read_json(evaluate_json)
    runs = pd.read_csv(runs_csv)
    audits = {split: read_json(path) for split, path in audit_jsons.items()}
    prepared = read_json(prepared_stats) if prepared_stats else None
    rows = overview_rows(
        champion, evaluation, runs, audits, read_json(cross_json), str(failed_list), prepared, skipped
    )
    failed = failed_run_lines(runs.loc[runs["status"] == "failed"])
    notes = reading_notes(champion, evaluation)
    write_text(out["rst"], rst_table(rows, notes))
    html_table(
        pd.DataFrame(rows).rename(columns={"what": "", "beside": "beside it"}),
        "The answer first: champion, test metrics, failed runs, data audit",
        out["html"],
        notes=notes + ([f"Retry only the failed runs: {retry_command(failed_list)}"] if failed else []),
    )
    write_text(out["txt"], "\n".join(terminal_lines(rows, evaluation, str(failed_list), failed, skipped)))
    return rows


def end_of_run_message(
    overview_txt: str | os.PathLike,
    failed_list: str | os.PathLike,
    inputs: Sequence,
    command=None,
    written_since: float = 0.0,
) -> str:
    """What a finished Snakemake run prints last: overview.txt when it is current (not older than the
    summaries it was made from), else the failed runs the aggregation found, else nothing; then the
    next commands, as `command(name, *args)` writes them (see next_commands). A run that failed or
    was interrupted passes its start time as written_since: an overview or list from an earlier run
    describes that run's sweep, not this one (a grown grid, say), so it is not shown."""
    overview_txt, failed_list = Path(overview_txt), Path(failed_list)
    failed = failed_list.read_text().split() if _current(failed_list, [], written_since) else []
    if _current(overview_txt, inputs, written_since):
        text = overview_txt.read_text().rstrip("\n")
    elif failed:
        listed = "\n".join(f"             {path}" for path in failed[:MAX_LISTED_FAILURES])
        text = f"\npcamflow: {len(failed)} run(s) FAILED on every attempt (runs.csv gives the reasons):\n{listed}"
    else:
        return ""
    return "\n".join([text, *next_commands(failed_list, bool(failed), command), ""])


def _current(path: Path, inputs: Sequence, written_since: float) -> bool:
    if not path.exists():
        return False
    mtime = path.stat().st_mtime
    return mtime >= written_since and all(
        not Path(p).exists() or Path(p).stat().st_mtime <= mtime for p in inputs
    )
