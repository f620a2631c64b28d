"""Commands and configs that mean what they say (issue 21 items 6 and 7): a config file gives its
partitions whole; a bad --set value is blamed on itself; an experiment may not take the name of what
a results root holds; an --until that would stop at the preflight says so instead of exiting 0."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, pcamflow, snakemake
from test_profiles import planned_jobs

from pcamflow.config import load_workflow_config, validate_config
from pcamflow.layout import ROOT_ENTRIES, results_root

BASE = REPO / "config" / "config.yaml"
# one seed, one grid point: the smallest config that trains (a dry run plans it)
TINY = {
    "synthetic": {"n_train": 256, "n_valid": 64, "n_test": 64},
    "seeds": [1],
    "grid": {"model": ["cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]},
    "training": {"epochs": 1, "cnn_width": 4},
}


def test_a_config_file_gives_its_partitions_whole():
    course = yaml.safe_load((REPO / "config" / "course.yaml").read_text())
    cfg = load_workflow_config([REPO / "config" / "course.yaml"], base=BASE)
    assert list(cfg["partitions"]) == ["thin_course", "gpu_course"]
    assert cfg["partitions"]["gpu_course"] == course["partitions"]["gpu_course"]
    assert cfg["seeds"] == course["seeds"]  # other keys still layered
    # a mapping with keys the schema names is still merged key by key
    cfg = load_workflow_config(overrides=["training={epochs: 2}"], base=BASE)
    assert cfg["training"]["epochs"] == 2 and cfg["training"]["cnn_width"] == 8


def snakemakes_own_merge(files: list[Path], overrides: dict) -> dict:
    """The config as Snakemake merges it (what rules/common.smk validated before): the command line's
    layers, then config/config.yaml under them, keys in the order that gives."""
    from snakemake.utils import update_config

    given = {}
    for path in files:
        update_config(given, yaml.safe_load(path.read_text()))
    update_config(given, overrides)
    merged = copy.deepcopy(given)
    update_config(merged, yaml.safe_load(BASE.read_text()))
    update_config(merged, given)
    return validate_config(merged)


@pytest.mark.parametrize("name", ["test.yaml", "pcam.yaml", "course.yaml"])
def test_the_layering_keeps_every_other_value_and_snakemakes_key_order(name):
    """Params are compared as text: a key order other than Snakemake's own would rerun finished jobs."""
    files, overrides = [REPO / "config" / name], {"training": {"epochs": 3}, "seeds": [7, 8]}
    texts = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    mine = load_workflow_config(files, texts, base=BASE)
    before = snakemakes_own_merge(files, overrides)
    own = yaml.safe_load(files[0].read_text()).get("partitions")
    assert mine.pop("partitions") == (own or before["partitions"])
    before.pop("partitions")
    assert json.dumps(mine) == json.dumps(before)


def test_the_course_config_plans_throughput_on_the_course_partitions_only(workflow_dir):
    out = snakemake(
        workflow_dir, "-n", "--configfile", "config/course.yaml", "--config", "experiment=course"
    ).stdout
    partitions = {wildcards["partition"] for rule, wildcards, _ in planned_jobs(out) if rule == "throughput"}
    assert partitions == {"thin_course", "gpu_course"}


def test_a_bad_set_value_is_blamed_on_itself(workflow_dir):
    (workflow_dir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    proc = pcamflow(
        "status", "--config", "tiny.yaml", "--set", "training.epochs=2", cwd=workflow_dir, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("pcamflow: error: --set training.epochs=2: unknown key 'training.epochs'")


def test_an_experiment_may_not_take_the_name_of_an_entry_of_a_results_root(workflow_dir):
    assert "preflight" in ROOT_ENTRIES
    for name in ("preflight", "experiment.json"):
        with pytest.raises(Exception, match=f"'experiment': '{name}' is the name of a folder in results/"):
            results_root(name)
    run = snakemake(workflow_dir, "-n", "--config", "experiment=preflight", check=False)
    assert run.returncode != 0
    assert "'experiment': 'preflight' is the name of a folder in results/" in run.stdout + run.stderr


@pytest.mark.slow
def test_every_entry_of_a_finished_results_root_is_a_name_no_experiment_may_take(finished_test_sweep):
    entries = {path.name for path in (finished_test_sweep / "results").iterdir()}
    assert entries <= set(ROOT_ENTRIES), entries - set(ROOT_ENTRIES)


def refusal(run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("pcamflow: error:")]
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    return lines[0]


@pytest.mark.parametrize("rule", ["train", "plot_grid_point"])
def test_an_until_that_would_stop_at_the_preflight_says_so(rule, workflow_dir, monkeypatch):
    (workflow_dir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    for dry_run in (["-n"], []):  # refused before any job runs, also when not a dry run
        line = refusal(
            snakemake(
                workflow_dir,
                "--cores",
                "1",
                "--configfile",
                "tiny.yaml",
                "--until",
                rule,
                *dry_run,
                check=False,
            )
        )
        assert line.startswith(f"pcamflow: error: --until {rule}: Snakemake would stop after the preflight")
    assert not (workflow_dir / "results").exists()
    # the same through the course profile (an empty Slurm config: a dry run needs no cluster)
    monkeypatch.setenv("SLURM_CONF", "/dev/null")
    args = ("-n", "--profile", "profiles/snellius-course", "--configfile", "tiny.yaml", "--until", rule)
    assert f"--until {rule}: Snakemake would stop" in refusal(snakemake(workflow_dir, *args, check=False))


@pytest.mark.parametrize("rule", ["audit", "throughput", "aggregate"])
def test_other_untils_run_what_they_ask_for(rule, workflow_dir):
    (workflow_dir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    out = snakemake(workflow_dir, "-n", "--configfile", "tiny.yaml", "--until", rule).stdout
    rules = {name for name, _, _ in planned_jobs(out)}
    assert rule in rules
    # only an --until past the preflight plans it, and then with the training it gates
    assert ("preflight" in rules) == (rule == "aggregate") and ("train" in rules) == (rule == "aggregate")
