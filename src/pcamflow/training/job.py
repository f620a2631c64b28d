"""The workflow's training job: a small supervisor process that trains in a child process.

A process killed by a signal (the kernel's or a Slurm cgroup's OOM killer, SIGSEGV or SIGBUS in a
native library, `kill -9`) writes nothing. So the rule's script only supervises: it never imports
torch, stays small (the OOM killer picks the process with the most memory: the child) and outlives
the child. On the run's last attempt it records a child killed by a signal as failed
(runstatus.write_failed_run, as for an exception); before, it fails, so Snakemake retries it.

The child does what the script did in-process before: attempt.train_or_record_failure under
logged.run_logged (its log lines and one line per error; exit 75 when preempted, so a retry resumes).
It runs in its own session, so a terminal's Ctrl-C reaches it once, from the supervisor, which
forwards SIGTERM, SIGUSR1 and SIGINT and exits with the child's exit code. If the supervisor dies,
the child gets SIGTERM (it checkpoints and stops) instead of training on unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import inspect
import json
import logging
import os
import signal
import site
import subprocess
import sys
import threading
from pathlib import Path

import pcamflow
from pcamflow.errors import PcamflowError
from pcamflow.logged import run_logged
from pcamflow.training.attempt import check_injected_signal, train_or_record_failure
from pcamflow.training.runstatus import write_failed_run

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
# What a signal that killed the training usually means, for the failure's reason
SIGNAL_HINTS = {
    "SIGKILL": "out of memory? check the job's memory request, resources.mem_mb / sacct MaxRSS",
    "SIGSEGV": "a crash in native code; the log holds the Python stack",
    "SIGBUS": "a crash in native code, or a memory-mapped file cut short; the log holds the Python stack",
    "SIGABRT": "aborted by native code; see the log",
}
_PR_SET_PDEATHSIG = 1  # prctl(2), Linux


def killed_reason(signum: int) -> str:
    """The failure reason of a training process killed by signal `signum`."""
    name = signal.Signals(signum).name
    hint = SIGNAL_HINTS.get(name)
    return f"killed by signal {name}" + (f" ({hint})" if hint else "")


def supervise_training(*args, log_path: str | os.PathLike | None = None, **kwargs) -> None:
    """train_or_record_failure(*args, **kwargs) in a child process that logs to log_path.

    Returns when the child trained the run or recorded it as failed, and when the child was killed
    by a signal on the last attempt (the run is then recorded as failed here). Raises SystemExit
    with the child's exit code when it failed (it has said why), and PcamflowError when it was
    killed by a signal before the last attempt, so Snakemake retries either.
    """
    bound = inspect.signature(train_or_record_failure).bind(*args, **kwargs)
    bound.apply_defaults()
    job = {
        name: os.fspath(value) if isinstance(value, os.PathLike) else value
        for name, value in bound.arguments.items()
    }
    attempt, attempts = job["attempt"], job["attempts"]
    spec = {"job": job, "log": os.fspath(log_path) if log_path else None, "supervisor": os.getpid()}
    with SignalForwarder() as forwarder:
        child = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, env=_child_env(), start_new_session=True
        )
        forwarder.follow(child)
        log.info("training in process %d (attempt %d of %d)", child.pid, attempt, attempts)
        with contextlib.suppress(BrokenPipeError):  # a child that died at once: its exit code says how
            child.stdin.write(json.dumps(spec).encode())
            child.stdin.close()
        code = child.wait()
    if code > 0:
        raise SystemExit(code)  # the child logged why and said it in one line
    if code == 0:
        return
    signum = -code
    if signum in forwarder.forwarded:  # stopped on purpose before it could checkpoint
        raise SystemExit(128 + signum)
    reason = killed_reason(signum)
    if attempt < attempts:
        raise PcamflowError(f"training {reason}; attempt {attempt} of {attempts}, so it is retried")
    log.error("attempt %d of %d: training %s; recording the run as failed", attempt, attempts, reason)
    write_failed_run(job["out_dir"], job["state_dir"], job["run_config"], reason, attempt)


class SignalForwarder:
    """Passes SIGTERM/SIGUSR1/SIGINT on to the child (handlers need the main thread; elsewhere,
    as in tests, nothing is installed). A signal that came before the child started is passed on
    when it starts."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.forwarded: set[int] = set()
        self._received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for name in FORWARDED_SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def follow(self, child: subprocess.Popen) -> None:
        self.child = child
        for signum in self._received:
            self._forward(signum)

    def _handle(self, signum, _frame) -> None:
        self._received.append(signum)
        if self.child is not None:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self.child.returncode is None:  # not reaped yet, so its pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, signum)
                self.forwarded.add(signum)


def _child_env() -> dict:
    """The environment, with the pcamflow this process runs on the child's import path first (a
    source checkout, as in tests; an installed package is found anyway)."""
    root = str(Path(pcamflow.__file__).resolve().parent.parent)
    if root in site.getsitepackages() + [site.getusersitepackages()]:
        return dict(os.environ)
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, path]) if path else root)


# ---------------------------------------------------------------- the training child


def child_main() -> None:
    spec = json.load(sys.stdin)
    _stop_with_supervisor(spec["supervisor"])
    crash_log = open(spec["log"], "a") if spec["log"] else sys.stderr  # noqa: SIM115 - open till exit
    faulthandler.enable(crash_log)  # a SIGSEGV/SIGBUS leaves the Python stack in the log
    run_logged(spec["log"], lambda: _train(spec))


def _train(spec: dict) -> None:
    check_injected_signal(spec["job"]["out_dir"])
    train_or_record_failure(**spec["job"])


def _stop_with_supervisor(supervisor: int) -> None:
    """SIGTERM to this process when the supervisor dies (Linux): it checkpoints and stops."""
    with contextlib.suppress(OSError, AttributeError):  # no prctl outside Linux
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != supervisor:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    child_main()
