"""Run `python -m MODULE ARGS` in a new process that starts with the heavy imports already done.

Every Snakemake or `pcamflow` command the tests run would otherwise spend most of its CPU time
importing (Snakemake, pandas and torch: 1.3 s of a 2.2 s dry run, 3.5 s of `pcamflow cost`).
A forkserver (the standard library's) imports them once; each command is a fork of it: a process
of its own, with its own working directory, environment, stdout, stderr and exit status, that
runs the module's `__main__` exactly as `python -m` does and runs the exit handlers as Python does
at exit. PCAMFLOW_TEST_FRESH_PROCESSES=1 starts a fresh interpreter for every command instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

# Imported once in the forkserver: what the commands import anyway (not pcamflow itself, so that a
# command imports the checkout's code as it is when the command starts).
PRELOAD = [
    "snakemake.cli",
    "snakemake_executor_plugin_slurm",
    "pandas",
    "torch",
    "h5py",
    "yaml",
    "jsonschema",
]
FRESH = os.environ.get("PCAMFLOW_TEST_FRESH_PROCESSES") == "1"

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _main(module: str, args: list[str], cwd: str, env: dict, out: str, err: str) -> None:
    """The child: `python -m module args` in cwd with env, stdout and stderr to the files out, err."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        with open(path, "wb") as fh:
            os.dup2(fh.fileno(), fd)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the process's own stdout)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.argv = [module, *args]
    # as `python -m`: the working directory, then PYTHONPATH, first on the path
    sys.path[:0] = [cwd, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_module(
    module: str, args: list[str], *, cwd: os.PathLike | None = None, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """`python -m module args` as subprocess.run(..., capture_output=True, text=True) gives it."""
    cmd = [sys.executable, "-m", module, *args]
    if FRESH:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    with tempfile.TemporaryDirectory(prefix="pcamflow-cmd-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        cwd = str(cwd or os.getcwd())
        process = _forkserver().Process(target=_main, args=(module, list(args), cwd, env, str(out), str(err)))
        process.start()
        try:
            process.join(timeout)
            timed_out = process.exitcode is None
        finally:  # timed out, or the test interrupted: the command goes too (as with subprocess.run)
            if process.exitcode is None:
                process.kill()
                process.join()
        if timed_out:
            raise subprocess.TimeoutExpired(cmd, timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess(cmd, process.exitcode, out.read_text(), err.read_text())
