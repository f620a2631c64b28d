"""Experiments never overwrite each other; operational keys rerun nothing (pcamflow.experiment, layout)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow, snakemake

from pcamflow import constants
from pcamflow.config import operational_keys, validate_config
from pcamflow.errors import PcamflowError
from pcamflow.experiment import check_experiment, experiment_settings, record_experiment
from pcamflow.layout import EXPERIMENT_FILE, results_root, run_dir

CONFIG = ("--configfile", "config/test.yaml")
# runs, summary, evaluation, the bundle and the throughput study: every rule whose params could hold
# a training setting
TARGETS = ("results/summary/metrics_avg.csv", "results/handover.tar.gz", "results/summary/throughput.csv")
# A new value for every operational key of the schema (the test fails when one is added without one).
OPERATIONAL_CHANGES = {
    "training": {
        "log_every": 3,
        "grad_norm_every": 3,
        "checkpoint_minutes": 1,
        "checkpoint_every_steps": 2,
        "device": "cpu",
        "threads": 2,
        "eval_batch_size": 64,
        "device_resident": True,
        "cpu_accelerator": "off",
    },
    "audit": {"block_size": 7},
    "download": {"base_url": "https://mirror.example.org/pcam", "timeout_s": 5, "retries": 1},
}


def snapshot(results: Path) -> dict[str, tuple[str, int]]:
    """Every file under results/: its sha256 and modification time. Not the store check's cache
    (prepared/verified.json): the stats it remembers are new in a copy of results/ (new inodes), so
    the first check of the copy hashes the store again and records them."""
    return {
        str(path.relative_to(results)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(results.rglob("*"))
        if path.is_file() and path.name != "verified.json"
    }


def as_override(section: str, settings: dict) -> str:
    return f"{section}={yaml.safe_dump(settings, default_flow_style=True).strip()}"


@pytest.mark.slow
def test_another_experiment_never_touches_a_finished_one_and_operational_keys_rerun_nothing(
    finished_test_sweep, tmp_path
):
    # the whole workflow, finished on the test config (conftest), in a copy of its own
    workflow_dir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    results = workflow_dir / "results"
    first = snapshot(results)
    assert EXPERIMENT_FILE in first and "handover.tar.gz" in first

    # every operational key changed: nothing to do, and a real run touches nothing
    assert {f"{s}.{k}" for s, keys in OPERATIONAL_CHANGES.items() for k in keys} == set(operational_keys())
    changed = ("--config", *(as_override(s, keys) for s, keys in OPERATIONAL_CHANGES.items()))
    assert "Nothing to be done" in snakemake(workflow_dir, "-n", *TARGETS, *CONFIG, *changed).stdout
    snakemake(workflow_dir, "--cores", "2", *TARGETS, *CONFIG, *changed)
    assert snapshot(results) == first

    # other data in the same results root: refused before any job, in one line naming key and remedy
    other_seed = ("--config", "synthetic={seed: 1}")
    proc = snakemake(workflow_dir, "--cores", "2", *TARGETS, *CONFIG, *other_seed, check=False)
    assert proc.returncode != 0
    assert (
        "results/experiment.json: the results in results/ were made with synthetic.seed=0, "
        "this config has synthetic.seed=1; to keep both, give this config its own experiment name "
        "(--config experiment=NAME" in proc.stdout + proc.stderr
    )
    assert snapshot(results) == first

    # under its own name it runs beside the first (one of its runs here), which stays byte for byte
    grid = yaml.safe_load((workflow_dir / "config" / "test.yaml").read_text())["grid"]
    point = {key: values[0] for key, values in grid.items()}
    second_run = run_dir(results_root("seed1"), point, 1)
    snakemake(
        workflow_dir, "--cores", "2", f"{second_run}/history.json", *CONFIG, *other_seed[:-1],
        "synthetic={seed: 1}", "experiment=seed1",
    )  # fmt: skip
    after = snapshot(results)
    assert {name: v for name, v in after.items() if not name.startswith("seed1/")} == first
    assert (workflow_dir / second_run / "checkpoint_best.pt").exists()
    assert (workflow_dir / second_run / "checkpoint_best.pt").read_bytes() != (
        workflow_dir / run_dir(results_root("default"), point, 1) / "checkpoint_best.pt"
    ).read_bytes()


def test_operational_keys_are_not_part_of_an_experiment():
    cfg = validate_config({})
    settings = experiment_settings(cfg)
    assert not set(settings) & set(operational_keys())
    assert {"dataset", "synthetic.seed", "training.epochs", "prepare.drop_cross_split_duplicates"} <= set(
        settings
    )
    assert not any(key.startswith(("grid.", "seeds", "evaluate.")) for key in settings)  # paths or downstream


def write_raw_files(data_dir: Path, content: bytes) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in constants.SPLITS:
        for kind in ("x", "y"):
            (data_dir / constants.raw_filename(split, kind)).write_bytes(content)


def test_pcam_files_swapped_in_data_dir_are_another_experiment(tmp_path):
    data_dir, root = tmp_path / "pcam", tmp_path / "results"
    cfg = validate_config({"dataset": "pcam", "data_dir": str(data_dir)})
    record_experiment(cfg, root)  # nothing on disk yet: the files are still to be downloaded
    write_raw_files(data_dir, b"the Zenodo files")
    check_experiment(cfg, root)  # downloaded since: the same experiment
    record_experiment(cfg, root)  # ... whose record now holds their signatures
    write_raw_files(data_dir, b"a course copy, same size")
    with pytest.raises(
        PcamflowError, match=r"made with data_files\.train_x='16 bytes, sha256 .*experiment=NAME"
    ):
        check_experiment(cfg, root)
    with pytest.raises(PcamflowError, match=r"data_dir="):
        check_experiment(validate_config({"dataset": "pcam", "data_dir": str(tmp_path)}), root)


def test_an_experiment_name_may_not_be_a_folder_of_the_default_experiment():
    assert results_root("default") == Path("results")
    assert results_root("pcam") == Path("results/pcam")
    with pytest.raises(PcamflowError, match="'experiment': 'summary' is the name of a folder in results/"):
        results_root("summary")
    with pytest.raises(PcamflowError, match="key 'experiment'"):
        validate_config({"experiment": "../elsewhere"})
