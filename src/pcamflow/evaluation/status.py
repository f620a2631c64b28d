"""`pcamflow status`: where a sweep stands, for one config, read from its results root.

Every run of every grid point is done, failed (with the reason its run.json records), running
(with its Slurm job id and elapsed time when squeue lists it), queued (a Slurm job waiting),
interrupted (started, but no Snakemake controller is running, or only the stale locks of a dead
one remain (pcamflow.controller): the next run resumes it) or pending. Each grid point with
finished runs shows its best validation metric so far.

Read-only: it takes no Snakemake lock and writes nothing, so it is safe beside a running controller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pcamflow import layout
from pcamflow.config import WORKFLOW_CONFIG, grid_points, load_workflow_config
from pcamflow.controller import controller_state
from pcamflow.errors import PcamflowError
from pcamflow.evaluation.aggregate import best_epoch_row, better, load_history
from pcamflow.experiment import check_experiment
from pcamflow.io import read_json
from pcamflow.rundir import HISTORY, RUN_INFO, point_id
from pcamflow.training.runstatus import describe_failure

SQUEUE_FORMAT = "%i|%T|%M|%k|%Z"  # job id, state, time used, comment, working directory
SQUEUE_STATES = {"PENDING": "queued", "CONFIGURING": "queued"}  # anything else alive: running


@dataclass
class RunStatus:
    seed: int
    state: str  # done, failed, running, queued, interrupted, pending
    detail: str = ""
    metric: float | None = None  # the run's validation metric at its best epoch (done runs)


def slurm_comment(point: dict, seed: int) -> str:
    """The comment snakemake-executor-plugin-slurm gives a training job: the rule, then the job's
    wildcard values (grid values in path order, then the seed) joined by underscores."""
    return "_".join(["rule_train_wildcards", *(str(v) for v in point.values()), str(seed)])


# What squeue says where no Slurm is set up (no config file, no controller to ask): not a Slurm site
NO_SLURM = (
    "failed to fetch config",
    "cannot stat file",
    "Could not establish a configuration source",
    "Unable to contact slurm controller",
)


def slurm_jobs(workdir: Path) -> tuple[dict[str, dict], str | None]:
    """This user's live Slurm jobs started from workdir, by comment; and why none could be read
    (None also where no Slurm is set up: no squeue, or one that finds no cluster to ask)."""
    conf = os.environ.get("SLURM_CONF")
    if shutil.which("squeue") is None or (conf is not None and not Path(conf).is_file()):
        return {}, None  # not a Slurm machine (a missing SLURM_CONF makes squeue retry for a minute)
    try:
        proc = subprocess.run(
            ["squeue", "--me", "--noheader", f"--format={SQUEUE_FORMAT}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"squeue did not answer ({exc})"
    if proc.returncode != 0:
        if any(sign in proc.stderr for sign in NO_SLURM):
            return {}, None
        lines = proc.stderr.strip().splitlines()
        return {}, f"squeue failed: {lines[-1] if lines else f'exit status {proc.returncode}'}"
    jobs = {}
    for line in proc.stdout.splitlines():
        fields = line.split("|", 4)
        if len(fields) != 5 or not _same_dir(fields[4], workdir):
            continue
        job_id, state, elapsed, comment, _ = fields
        jobs[comment] = {"id": job_id, "state": state, "elapsed": elapsed}
    return jobs, None


def _same_dir(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def run_status(root: Path, point: dict, seed: int, metric: str, controller: bool, jobs: dict) -> RunStatus:
    run_dir = layout.run_dir(root, point, seed)
    info_path = run_dir / RUN_INFO
    if info_path.exists():
        info = _read(info_path)
        if info.get("status", "done") == "failed":  # CONTRACT: a run that used its last attempt
            failure = info.get("failure") or {}
            attempts = failure.get("attempts")
            tried = f" (after {attempts} attempt{'s' if attempts != 1 else ''})" if attempts else ""
            return RunStatus(seed, "failed", f"{describe_failure(failure)}{tried}")
        if (run_dir / HISTORY).exists():
            best = best_epoch_row(load_history(run_dir))
            value = best.get(metric)
            return RunStatus(seed, "done", f"{metric} {_fmt(value)} (epoch {best['epoch']})", value)
    job = jobs.get(slurm_comment(point, seed))
    if job:
        state = SQUEUE_STATES.get(job["state"], "running")
        return RunStatus(
            seed, state, f"Slurm job {job['id']}, {job['state'].lower()}, {job['elapsed']} elapsed"
        )
    # Snakemake makes a job's output directory when it starts it; the script then opens its log
    log = layout.train_log(root, point, seed)
    if run_dir.exists() or log.exists():
        if controller:
            return RunStatus(seed, "running", f"log: {log}")
        return RunStatus(seed, "interrupted", "started, no controller running; the next run resumes it")
    return RunStatus(seed, "pending")


def resume_command(config_files, overrides, unlock: bool) -> str:
    """The snakemake command that resumes the sweep status was asked about (after `--unlock` when a
    dead controller's locks remain)."""
    args = "".join(f" --configfile {f}" for f in config_files) + "".join(f" --config {o}" for o in overrides)
    run = f"snakemake{args}"
    return f"snakemake --unlock{args} && {run}" if unlock else run


def sweep_status(
    cfg: dict, workdir: Path = Path("."), config_files=(), overrides=()
) -> tuple[list[tuple[dict, list[RunStatus]]], list[str]]:
    """Every grid point with its runs' states, and notes (another experiment's results, squeue
    trouble, a dead controller's locks). config_files and overrides: what status was given, for the
    command that resumes the sweep."""
    root = workdir / layout.results_root(cfg["experiment"])
    notes = []
    try:
        check_experiment(cfg, root)
    except PcamflowError as clash:
        notes.append(f"note: {clash}")
    jobs, trouble = slurm_jobs(workdir)
    if trouble:
        notes.append(f"note: {trouble}; Slurm jobs are not shown")
    found = controller_state(workdir)
    controller = found.state in ("live", "unknown")  # unknown: locks that cannot be checked
    metric = cfg["champion"]["metric"]
    table = []
    for point in grid_points(cfg):
        runs = [run_status(root, point, seed, metric, controller, jobs) for seed in cfg["seeds"]]
        table.append((point, runs))
    if any(run.state == "interrupted" for _, runs in table for run in runs):
        dead = found.state == "dead"
        notes.append(
            (f"note: {found.detail}; " if dead else "note: ")
            + f"resume the interrupted runs with: {resume_command(config_files, overrides, dead)}"
            + " (add your --profile, if any)"
        )
    failed = [
        str(layout.run_dir(layout.results_root(cfg["experiment"]), point, run.seed) / RUN_INFO)
        for point, runs in table
        for run in runs
        if run.state == "failed"
    ]
    if failed:  # what aggregate's failed_runs.txt will list once the sweep is summarised
        notes.append(
            f"note: retry the failed runs with: {resume_command(config_files, overrides, False)} "
            f"--forcerun {' '.join(failed)} (add your --profile, if any)"
        )
    return table, notes


def format_status(cfg: dict, table, notes, config_name: str) -> str:
    root = layout.results_root(cfg["experiment"])
    metric = cfg["champion"]["metric"]
    runs = [run for _, point_runs in table for run in point_runs]
    counts = {state: sum(run.state == state for run in runs) for state in _states_in(runs)}
    lines = [
        f"experiment {cfg['experiment']!r} ({config_name}), results in {root}/",
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
        + ", ".join(f"{n} {state}" for state, n in counts.items()),
        *notes,
    ]
    for point, point_runs in table:
        done = [run for run in point_runs if run.state == "done" and run.metric is not None]
        header = f"{point_id(point, list(point))}  {len(done)}/{len(point_runs)} done"
        if done:
            pick = min if better(metric) == "lower" else max
            best = pick(done, key=lambda run: run.metric)
            mean = sum(run.metric for run in done) / len(done)
            header += f"  best {metric} {_fmt(best.metric)} (seed {best.seed}), mean {_fmt(mean)}"
        lines += ["", header]
        for run in point_runs:
            lines.append(f"  seed {run.seed:<6} {run.state:<11} {run.detail}".rstrip())
    return "\n".join(lines)


def _states_in(runs: list[RunStatus]) -> list[str]:
    order = ("done", "running", "queued", "failed", "interrupted", "pending")
    return [state for state in order if any(run.state == state for run in runs)]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _read(path: Path) -> dict:
    try:
        data = read_json(path)
    except ValueError as exc:
        raise PcamflowError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def cli_main(args) -> int:
    cfg = load_workflow_config(args.config or [], args.set or [], base=WORKFLOW_CONFIG)
    config_name = ", ".join(str(p) for p in [WORKFLOW_CONFIG, *(args.config or [])] if Path(p).exists())
    table, notes = sweep_status(cfg, Path("."), args.config or [], args.set or [])
    print(format_status(cfg, table, notes, config_name or "schema defaults"))
    return 0
