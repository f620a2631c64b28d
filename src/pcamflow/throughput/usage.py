"""What a run really cost, per rule: from Slurm's accounting (sacct) after a run on Slurm, else
from the rules' benchmark files; beside `pcamflow cost`'s estimate for the same config.

On Slurm every job of this workflow directory is counted, retries and failed attempts included
(that is what is billed): jobs, elapsed hours, the CPUs, memory and GPUs each job was allocated,
and the SBU Snellius charges for them, with the constants `pcamflow cost` uses (pcamflow.throughput.cost).
Outside Slurm the rules' `benchmark:` files give elapsed and CPU hours (no SBU).
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from pcamflow.slurm import allocation
from pcamflow.throughput.cost import job_sbu, sbu_by_rule

SACCT_FIELDS = ("JobID", "Comment", "Partition", "State", "ElapsedRaw", "AllocTRES", "WorkDir")
COLUMNS = (
    "rule",
    "jobs",
    "elapsed_h",
    "cpus_per_job",
    "mem_gb_per_job",
    "gpus_per_job",
    "cpu_h",
    "gpu_h",
    "sbu",
    "estimate_sbu",
    "ratio",
    "source",
)


def sacct_jobs(workdir: str | os.PathLike, since: datetime) -> list[dict] | None:
    """This user's Slurm jobs submitted from `workdir` by Snakemake (comment rule_...), since
    `since`; None when sacct cannot be run."""
    cmd = ["sacct", "-X", "-P", "-n", "-u", getpass.getuser(), "-S", since.strftime("%Y-%m-%dT%H:%M:%S")]
    try:
        out = subprocess.run(
            [*cmd, "-E", "now", "-o", ",".join(SACCT_FIELDS)], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    workdir = os.path.realpath(workdir)
    rows = [dict(zip(SACCT_FIELDS, line.split("|"), strict=False)) for line in out.stdout.splitlines()]
    return [
        row
        for row in rows
        if row.get("Comment", "").startswith("rule_") and os.path.realpath(row.get("WorkDir", "")) == workdir
    ]


def rule_of(comment: str, rules: list[str]) -> str:
    """The rule of a job from the plugin's comment: rule_<rule>[_wildcards_...], or
    rule_<group>_<rule> for a group job."""
    name = re.sub(r"_wildcards_.*$", "", comment.removeprefix("rule_"))
    if name in rules:
        return name
    return next((rule for rule in rules if name.endswith(f"_{rule}")), name)


def slurm_usage(jobs: list[dict], rules: list[str]) -> pd.DataFrame:
    records = []
    for job in jobs:
        alloc = allocation(job["AllocTRES"])
        hours = int(job["ElapsedRaw"] or 0) / 3600
        records.append(
            {
                "rule": rule_of(job["Comment"], rules),
                "elapsed_h": hours,
                "cpus": alloc["cpus"],
                "mem_gb": alloc["mem_mb"] / 1024,
                "gpus": alloc["gpus"],
                "cpu_h": alloc["cpus"] * hours,
                "gpu_h": alloc["gpus"] * hours,
                "sbu": job_sbu(alloc["cpus"], alloc["gpus"], hours),
            }
        )
    frame = pd.DataFrame(records)
    per_rule = frame.groupby("rule", sort=False).agg(
        jobs=("rule", "size"),
        elapsed_h=("elapsed_h", "sum"),
        cpus_per_job=("cpus", "max"),
        mem_gb_per_job=("mem_gb", "max"),
        gpus_per_job=("gpus", "max"),
        cpu_h=("cpu_h", "sum"),
        gpu_h=("gpu_h", "sum"),
        sbu=("sbu", "sum"),
    )
    return per_rule.reset_index().assign(source="sacct")


def benchmark_usage(benchmarks_dir: str | os.PathLike) -> pd.DataFrame:
    """Per rule from its benchmark files (results/benchmarks/<rule>[/...].tsv): jobs, elapsed and CPU hours."""
    records = []
    for path in sorted(Path(benchmarks_dir).rglob("*.tsv")):
        rule = path.relative_to(benchmarks_dir).parts[0].removesuffix(".tsv")
        table = pd.read_csv(path, sep="\t")
        for _, row in table.iterrows():
            records.append({"rule": rule, "elapsed_h": row["s"] / 3600, "cpu_h": row["cpu_time"] / 3600})
    if not records:
        return pd.DataFrame(columns=["rule", "jobs", "elapsed_h", "cpu_h", "source"])
    frame = pd.DataFrame(records).groupby("rule", sort=False)
    per_rule = frame.agg(jobs=("rule", "size"), elapsed_h=("elapsed_h", "sum"), cpu_h=("cpu_h", "sum"))
    return per_rule.reset_index().assign(source="benchmark")


def with_estimate(usage: pd.DataFrame, estimate_lines) -> pd.DataFrame:
    """Add each rule's estimated SBU (pcamflow.throughput.cost) and actual / estimate, and a total row."""
    estimated = sbu_by_rule(estimate_lines)
    frame = usage.copy()
    frame["estimate_sbu"] = frame["rule"].map(estimated)
    for rule, sbu in estimated.items():  # estimated rules that did not run are shown too
        if rule not in set(frame["rule"]):
            frame.loc[len(frame), ["rule", "jobs", "estimate_sbu"]] = [rule, 0, sbu]
    total = {
        col: frame[col].sum(min_count=1)
        for col in ("jobs", "elapsed_h", "cpu_h", "gpu_h", "sbu")
        if col in frame
    }
    total.update(rule="total", estimate_sbu=sum(line.sbu for line in estimate_lines))
    frame.loc[len(frame), list(total)] = list(total.values())
    if "sbu" in frame:
        frame["ratio"] = frame["sbu"] / frame["estimate_sbu"]
    frame["source"] = frame["source"].ffill()
    return frame.reindex(columns=list(COLUMNS))


def usage_since(logs_dir: str | os.PathLike) -> datetime:
    """Where sacct starts looking: a day before the oldest log of this workflow (30 days without logs)."""
    times = [p.stat().st_mtime for p in Path(logs_dir).rglob("*") if p.is_file()]
    start = datetime.fromtimestamp(min(times)) if times else datetime.now() - timedelta(days=29)
    return start - timedelta(days=1)


def run_usage(workdir, logs_dir, benchmarks_dir, rules: list[str], estimate_lines) -> pd.DataFrame:
    """The per-rule cost table: from sacct when this directory's jobs ran on Slurm, else from the
    benchmark files."""
    jobs = sacct_jobs(workdir, usage_since(logs_dir))
    usage = slurm_usage(jobs, rules) if jobs else benchmark_usage(benchmarks_dir)
    return with_estimate(usage, estimate_lines)
