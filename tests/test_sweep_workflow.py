"""The sweep as Snakemake expands it: one run per (grid point, seed), only new runs trained, clear errors."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import snakemake

# A sweep small enough to train for real in seconds: one grid point, one seed, one epoch.
TINY = {
    "synthetic": {"n_train": 200, "n_valid": 100, "n_test": 100},
    "seeds": [1],
    "grid": {"model": ["mlp"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]},
    "training": {"epochs": 1, "mlp_hidden": [8]},
}
AVG = "results/summary/metrics_avg.csv"


def job_counts(dry_run: str) -> dict[str, int]:
    """rule -> number of jobs Snakemake would run (from a dry run's job stats)."""
    stats = dry_run.split("Job stats:", 1)[1] if "Job stats:" in dry_run else ""
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)
        if m.group(1) != "total"
    }


def rule_outputs(dry_run: str, rule: str) -> list[str]:
    return re.findall(rf"^rule {rule}:\n(?:    input: .*\n)?    output: (.*)$", dry_run, re.M)


def dry_run(workdir, *args) -> str:
    return snakemake(workdir, "--dry-run", *args).stdout


def planned_jobs(workdir, *args) -> dict[str, int]:
    return job_counts(dry_run(workdir, *args))


def planned_outputs(workdir, rule, *args) -> list[str]:
    return rule_outputs(dry_run(workdir, *args), rule)


def write_config(workdir, name, cfg) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_default_sweep_is_one_run_per_grid_point_and_seed_with_every_wildcard_in_its_path(workflow_dir):
    config = yaml.safe_load((workflow_dir / "config" / "config.yaml").read_text())
    grid, seeds = config["grid"], config["seeds"]
    n_points = len(grid["model"]) * len(grid["lr"]) * len(grid["batch_size"]) * len(grid["optimizer"])
    assert {"mlp", "cnn"} <= set(grid["model"]) and len(seeds) == 3  # the demo: CNN against MLP, 3 seeds
    plan = dry_run(workflow_dir)
    jobs = job_counts(plan)
    assert jobs["train"] == n_points * len(seeds)
    for rule in ("aggregate", "champion", "predict_champion", "evaluate", "slices", "reproducibility"):
        assert jobs[rule] == 1, rule
    assert jobs["plot_grid_point"] == n_points
    outputs = rule_outputs(plan, "train")
    assert len(set(outputs)) == len(outputs) == n_points * len(seeds)
    for output in outputs:
        assert re.search(
            r"results/runs/model~\w+/lr~[\d.e-]+/batch_size~\d+/optimizer~\w+/seed~\d+/history\.json", output
        )


def test_a_run_path_maps_back_to_exactly_its_wildcards(workflow_dir):
    target = "results/runs/model~mlp/lr~0.003/batch_size~64/optimizer~adam/seed~43/history.json"
    out = snakemake(workflow_dir, "--dry-run", target).stdout
    assert "wildcards: model=mlp, lr=0.003, batch_size=64, optimizer=adam, seed=43" in out


def test_reproducibility_check_can_be_switched_off(workflow_dir):
    off = write_config(workflow_dir, "off.yaml", {"reproducibility": {"enabled": False}})
    jobs = planned_jobs(workflow_dir, "--configfile", off)
    assert "reproducibility" not in jobs and jobs["evaluate"] == 1


def test_reproducibility_can_repeat_a_chosen_run_trained_first_when_missing(workflow_dir):
    baseline = planned_jobs(workflow_dir)["train"]
    outside = "results/runs/model~cnn/lr~0.003/batch_size~64/optimizer~adam/seed~7"  # not a seed of the sweep
    chosen = write_config(workflow_dir, "chosen.yaml", {"reproducibility": {"run": outside}})
    out = dry_run(workflow_dir, "--configfile", chosen)
    assert job_counts(out)["train"] == baseline + 1
    (inputs,) = re.findall(r"^rule reproducibility:\n    input: (.*)$", out, re.M)
    assert f"{outside}/run.json" in inputs
    assert "champion.json" not in inputs  # a chosen run's twin need not wait for the whole sweep


def test_reproducibility_run_outside_the_grid_is_one_clear_error(workflow_dir):
    outside = write_config(
        workflow_dir,
        "outside.yaml",
        {"reproducibility": {"run": "results/runs/model~cnn/lr~0.5/batch_size~64/optimizer~adam/seed~1"}},
    )
    proc = snakemake(workflow_dir, "--dry-run", "--configfile", outside, check=False)
    assert proc.returncode != 0
    assert "config key 'reproducibility.run'" in proc.stdout + proc.stderr
    assert "is not a run of a grid point of this config" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"seeds": []}, "key 'seeds': the list is empty; give at least one value"),
        ({"grid": {"model": []}}, "key 'grid.model': the list is empty; give at least one value"),
        ({"grid": {"lr": []}}, "key 'grid.lr': the list is empty; give at least one value"),
    ],
)
def test_an_empty_seed_or_grid_list_is_one_clear_error(workflow_dir, override, message):
    bad = write_config(workflow_dir, "bad.yaml", override)
    proc = snakemake(workflow_dir, "--dry-run", "--configfile", bad, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_metrics_avg_from_scratch_then_a_new_seed_or_grid_value_trains_only_the_new_runs(workflow_dir):
    tiny = write_config(workflow_dir, "tiny.yaml", TINY)
    # from a fresh checkout: the one file a user asks for, and nothing downstream of it
    first = snakemake(workflow_dir, "--cores", "2", AVG, "--configfile", tiny)
    assert (workflow_dir / "results/summary/metrics_avg.csv").exists()
    assert not (workflow_dir / "results/summary/champion.json").exists()
    assert "rule evaluate" not in first.stdout + first.stderr
    avg = (workflow_dir / "results/summary/metrics_avg.csv").read_text().splitlines()
    assert len(avg) == 2 and avg[0].startswith("model,lr,batch_size,optimizer,n_seeds")
    assert planned_jobs(workflow_dir, AVG, "--configfile", tiny) == {}

    more_seeds = write_config(workflow_dir, "seeds.yaml", dict(TINY, seeds=[1, 2]))
    plan = dry_run(workflow_dir, AVG, "--configfile", more_seeds)
    jobs = job_counts(plan)
    assert jobs == {"preflight": 1, "train": 1, "aggregate": 1}  # a new run is preceded by a preflight
    (output,) = rule_outputs(plan, "train")
    assert "/lr~0.001/batch_size~32/optimizer~adam/seed~2/" in output

    more_lrs = write_config(workflow_dir, "lrs.yaml", dict(TINY, grid=dict(TINY["grid"], lr=[0.001, 0.01])))
    plan = dry_run(workflow_dir, AVG, "--configfile", more_lrs)
    jobs = job_counts(plan)
    assert jobs == {"preflight": 1, "train": 1, "aggregate": 1}
    (output,) = rule_outputs(plan, "train")
    assert "/lr~0.01/" in output

    # the twin of a chosen run trains beside the sweep: no champion, no evaluation needed first
    run = "results/runs/model~mlp/lr~0.001/batch_size~32/optimizer~adam/seed~1"
    chosen = write_config(workflow_dir, "chosen.yaml", dict(TINY, reproducibility={"run": run}))
    assert planned_jobs(workflow_dir, "results/summary/reproducibility.json", "--configfile", chosen) == {
        "reproducibility": 1
    }
    snakemake(workflow_dir, "--cores", "2", "results/summary/reproducibility.json", "--configfile", chosen)
    result = json.loads((workflow_dir / "results/summary/reproducibility.json").read_text())
    assert result["original"] == run and result["identical"] is True
