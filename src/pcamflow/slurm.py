"""What Slurm says about a job: this job's record (`scontrol show job`) and what a job was
allocated (its TRES string, as `scontrol` and `sacct` show it)."""

from __future__ import annotations

import os
import re
import subprocess

_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def slurm_job() -> dict | None:
    """Slurm's record of this job (`scontrol show job`: Features, TRES, ...), or None outside a job
    or when Slurm cannot be asked."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def allocation(tres: str) -> dict:
    """AllocTRES (e.g. billing=18,cpu=18,gres/gpu=1,mem=120G,node=1) -> cpus, mem_mb, gpus."""
    fields = dict(item.split("=", 1) for item in tres.split(",") if "=" in item)
    mem = re.fullmatch(r"([\d.]+)([KMGT]?)", fields.get("mem", "0"))
    return {
        "cpus": int(fields.get("cpu", 0)),
        "mem_mb": float(mem[1]) * _MEM_UNITS[mem[2] or "M"] if mem else 0.0,
        "gpus": int(fields.get("gres/gpu", 0)),
    }
