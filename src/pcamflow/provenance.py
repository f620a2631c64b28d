"""Where and with what a run ran: git commit, library versions, host, device, Slurm job."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import numpy as np
import torch

CODE_DIR = Path(__file__).resolve().parent  # the pcamflow source the run executes


def git_state(path: str | os.PathLike = CODE_DIR) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the git tree holding `path` (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    import torchvision

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "numba": _installed_version("numba"),  # the CPU accelerator's compiler: not imported here
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": cudnn if torch.cuda.is_available() else None,
    }


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model() or platform.machine()


def device_model(device: str) -> str | None:
    """The CPU or GPU model behind a device name ('cpu', 'cuda', 'cuda:1'); None for a GPU not present."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else None
    return cpu_model()


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def slurm_job_id() -> str | None:
    """The Slurm job id (array jobs as JOB_TASK), or None outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{task}"
    return job or None


def host_record(device: torch.device) -> dict:
    """The part of run.json that describes this process and machine."""
    return {
        "git": git_state(),
        "versions": versions(),
        "hostname": socket.gethostname(),
        "device": device.type,
        "device_name": device_name(device),
        "slurm_job_id": slurm_job_id(),
    }
