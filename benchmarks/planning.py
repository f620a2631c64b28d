"""How long Snakemake takes to plan a large sweep: `snakemake -n` with the Snellius profile.

For each number of runs N, writes a config (config/pcam.yaml with a seeds x lr x batch_size x
optimizer grid of N runs, its own experiment name) into a fresh temporary copy of the workflow,
runs `snakemake -n --profile profiles/snellius --configfile <it>` (no Slurm needed: SLURM_CONF is
/dev/null and no account is set) and prints its wall time and peak RSS; then the same for the
default config's `snakemake -n`. Goals (issue 23, on an idle 2-core machine): 1,000 runs <= 5 s,
4,000 runs <= 20 s, memory growing linearly, the default config <= 2 s.

    .venv/bin/python benchmarks/planning.py                          # 250, 1000, 4000 runs
    .venv/bin/python benchmarks/planning.py --runs 1000 --rounds 3   # medians of 3
    .venv/bin/python benchmarks/planning.py --code /work/base --code .   # two checkouts, interleaved
    .venv/bin/python benchmarks/planning.py --runs 1000 --cprofile prof/  # where the time goes

Each --code is a checkout (its Snakefile, rules, profiles and src/ are used); with several, every
round measures each of them in turn, so a busy machine slows them alike. CPU time (user + system)
varies less than wall time on a busy machine; wall time also holds Snakemake's waits (its event
loops, file lookups). The runs share one bytecode cache, filled by an unmeasured run first, as an
installed Snakemake has its .pyc files; --compile-each-run keeps the environment as it is (where
PYTHONDONTWRITEBYTECODE is set, every run compiles some thousand modules again: about 1.5 s).
"""

from __future__ import annotations

import argparse
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from snakemake import __version__ as SNAKEMAKE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_workflow_copy  # noqa: E402 (the tests' copy of the workflow, with its own results/)

OPTIMIZERS = ["adam", "sgd"]
MAX_SEEDS = 10
# no Slurm here: with an empty config every Slurm command fails at once (a missing one retries)
NO_SLURM = {"SLURM_CONF": "/dev/null", "SBATCH_ACCOUNT": ""}


def grid_shape(runs: int) -> tuple[int, int, int]:
    """(seeds, learning rates, batch sizes) that make `runs` runs with len(OPTIMIZERS) optimizers."""
    per_optimizer, rest = divmod(runs, len(OPTIMIZERS))
    if rest or runs <= 0:
        raise SystemExit(f"--runs {runs}: give a positive multiple of {len(OPTIMIZERS)}")
    seeds = max(d for d in range(1, MAX_SEEDS + 1) if per_optimizer % d == 0)
    points = per_optimizer // seeds
    batch_sizes = max(d for d in range(1, int(points**0.5) + 1) if points % d == 0)
    return seeds, points // batch_sizes, batch_sizes


def sweep_config(code: Path, runs: int) -> dict:
    """config/pcam.yaml with one model and a grid of `runs` runs, as its own experiment."""
    config = yaml.safe_load((code / "config" / "pcam.yaml").read_text())
    seeds, lrs, batch_sizes = grid_shape(runs)
    config["experiment"] = f"planning-{runs}"
    config["seeds"] = list(range(seeds))
    config["grid"] = {
        "model": ["cnn"],
        "lr": [round(1e-4 * (i + 1), 6) for i in range(lrs)],
        "batch_size": [16 * (i + 1) for i in range(batch_sizes)],
        "optimizer": OPTIMIZERS,
    }
    return config


def measure(
    code: Path, args: list[str], parent: Path, env: dict, cprofile: Path | None = None
) -> tuple[float, float, float, str]:
    """Run `snakemake -n *args` in a fresh copy of `code`: (wall s, CPU s, peak RSS MB, its output)."""
    workdir = make_workflow_copy(Path(tempfile.mkdtemp(prefix="wf-", dir=parent)), code)
    launcher = ["-m", "cProfile", "-o", str(cprofile), "-m", "snakemake"] if cprofile else ["-m", "snakemake"]
    cmd = [sys.executable, *launcher, "-n", "--directory", str(workdir), *args]
    env = dict(env, PYTHONPATH=str(code / "src"), **NO_SLURM)
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise SystemExit(
            f"snakemake {' '.join(args)} failed in {workdir} ({proc.returncode}):\n{output[-3000:]}"
        )
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def planned_jobs(output: str) -> int:
    """The total of a dry run's job stats."""
    for line in output.splitlines():
        if line.startswith("total"):
            return int(line.split()[1])
    return 0


def print_profile(path: Path, top: int) -> None:
    stats = pstats.Stats(str(path))
    print(f"\n{path}: top {top} by cumulative time")
    stats.sort_stats("cumulative").print_stats(top)
    print(f"{path}: top {top} by own time")
    stats.sort_stats("tottime").print_stats(top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[250, 1000, 4000], help="sweep sizes")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per case (medians shown)")
    parser.add_argument("--code", type=Path, action="append", help="checkout to measure (repeatable)")
    parser.add_argument("--profile", default="profiles/snellius", help="the profile of the sweep runs")
    parser.add_argument("--no-default", action="store_true", help="skip the default config's dry run")
    parser.add_argument(
        "--cprofile", type=Path, help="folder for cProfile files (one round; top entries shown)"
    )
    parser.add_argument("--top", type=int, default=25, help="entries shown per cProfile listing")
    parser.add_argument(
        "--compile-each-run",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as it is set (every run compiles Python's sources again); "
        "by default the runs share a bytecode cache, as an installed Snakemake has",
    )
    return parser.parse_args(argv)


def cases(args: argparse.Namespace, codes: list[Path], tmp: Path) -> list[tuple[str, Path, list[str]]]:
    """(label, checkout, snakemake arguments) of every dry run to measure, in the order measured."""
    found = []
    for runs in args.runs:
        for i, code in enumerate(codes):
            path = tmp / f"sweep-{runs}-{i}.yaml"
            path.write_text(yaml.safe_dump(sweep_config(code, runs), sort_keys=False))
            found.append((f"{runs} runs", code, ["--profile", args.profile, "--configfile", str(path)]))
    if not args.no_default:
        found += [("default config", code, []) for code in codes]
    return found


def run_environment(compile_each_run: bool, tmp: Path) -> dict:
    """The dry runs' environment: by default one bytecode cache for all of them (this machine may
    set PYTHONDONTWRITEBYTECODE, which makes every run compile some thousand modules again)."""
    env = dict(os.environ)
    if not compile_each_run:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


def print_table(measured: list[tuple[str, Path, list]], rounds: int) -> None:
    """One row per case: jobs planned, median wall time, CPU time and peak RSS."""
    print(f"\nsnakemake -n, medians of {rounds} round(s) ({os.cpu_count()} CPUs, Snakemake {SNAKEMAKE})")
    print(f"{'case':>15}  {'jobs':>6}  {'wall s':>7}  {'CPU s':>7}  {'peak RSS MB':>11}  checkout")
    for label, code, results in measured:
        walls, cpus, rsss, jobs = zip(*results, strict=True)
        print(
            f"{label:>15}  {jobs[0]:>6}  {statistics.median(walls):7.2f}  {statistics.median(cpus):7.2f}  "
            f"{statistics.median(rsss):11.0f}  {code}"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    codes = [c.resolve() for c in (args.code or [Path(__file__).resolve().parents[1]])]
    rounds = 1 if args.cprofile else args.rounds
    if args.cprofile:
        args.cprofile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pcamflow-planning-") as tmp:
        tmp = Path(tmp)
        todo = cases(args, codes, tmp)
        env = run_environment(args.compile_each_run, tmp)
        if not args.compile_each_run:
            for code in codes:  # fills the bytecode cache; not measured
                measure(code, [], tmp, env)
        results = [[] for _ in todo]
        for _ in range(rounds):
            for i, (label, code, smk_args) in enumerate(todo):
                prof = (
                    args.cprofile / f"{label.replace(' ', '-')}-{i}-{code.name}.prof"
                    if args.cprofile
                    else None
                )
                wall, cpu, rss, output = measure(code, smk_args, tmp, env, prof)
                results[i].append((wall, cpu, rss, planned_jobs(output)))
                print(
                    f"  {label:>15}  {code}: {wall:6.2f} s, CPU {cpu:6.2f} s, {rss:6.0f} MB", file=sys.stderr
                )
        print_table([(label, code, res) for (label, code, _), res in zip(todo, results, strict=True)], rounds)
    if args.cprofile:
        for path in sorted(args.cprofile.glob("*.prof")):
            print_profile(path, args.top)


if __name__ == "__main__":
    main()
