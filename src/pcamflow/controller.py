"""Whether a Snakemake controller is running in a workflow directory, or only its stale locks remain.

While a controller runs, Snakemake keeps lock files (`N.input.lock`, `N.output.lock`: the files it
reads and writes) in .snakemake/locks/ and deletes the folder when it stops. They hold no process
id, so a controller killed outright (SIGKILL, a dying login node) leaves locks that look the same as
a live one's. So the workflow's `onstart` handler adds a record of its own beside them: the host, the
process id and the process's start time (so a reused id is not taken for it). Snakemake deletes that
record with its locks. `pcamflow status` reads it: a controller on this host whose process is gone
(or another process now has its id) is dead, and its locks are stale.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

LOCKS = Path(".snakemake/locks")  # Snakemake's lock folder, in the workflow directory
RECORD_PREFIX = "pcamflow-controller"  # not N.{input,output}.lock: Snakemake's lock reader skips it


@dataclass
class Controller:
    state: str  # none (no locks), live, dead (stale locks), unknown (locks, but no record to check)
    detail: str = ""


def record_controller(workdir: Path = Path(".")) -> Path:
    """Write this process's record beside Snakemake's locks (called by the controller, onstart)."""
    locks = workdir / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}
    path = locks / f"{RECORD_PREFIX}.{me['host']}.{me['pid']}.json"
    path.write_text(json.dumps(me) + "\n")
    return path


def controller_state(workdir: Path = Path(".")) -> Controller:
    """What holds workdir's Snakemake locks: a live controller, a dead one, or nothing."""
    locks = workdir / LOCKS
    if not locks.is_dir() or not any(locks.glob("*.lock")):
        return Controller("none")
    records = [_read(path) for path in sorted(locks.glob(f"{RECORD_PREFIX}.*.json"))]
    records = [r for r in records if r is not None]
    if not records:
        return Controller("unknown", f"locks in {locks} without a pcamflow controller record")
    here = socket.gethostname()
    for record in records:
        if record["host"] != here:  # its process cannot be looked up from this host
            return Controller("live", f"controller on {record['host']} (process {record['pid']})")
        if process_start(record["pid"]) == record["start"]:
            return Controller("live", f"controller process {record['pid']}")
    pids = ", ".join(str(record["pid"]) for record in records)
    return Controller(
        "dead", f"the controller (process {pids} on {here}) is gone; its locks in {locks} are stale"
    )


def process_start(pid: int) -> str | None:
    """When process pid started (clock ticks since boot, from /proc), None when there is no such
    process. Without /proc (not Linux): "alive" for any process that exists."""
    if not Path("/proc/self/stat").exists():
        return _exists(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), after the command in parentheses


def _exists(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "alive"


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"host", "pid", "start"} <= set(record) else None
