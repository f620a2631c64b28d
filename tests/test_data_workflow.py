"""The data rules through Snakemake: synthesize -> audit -> audit_cross -> prepare, in a workflow copy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import copy_workflow, snakemake
from pcam_fixtures import write_raw_dir

from pcamflow import constants
from pcamflow.data.audit import FAULTS
from pcamflow.data.store import load_split, load_stats, store_checksum

MANIFEST = "results/prepared/manifest.json"
TEST_SIZES = {"train": 600, "valid": 200, "test": 200}  # config/test.yaml


def read(wf, path):
    return json.loads((wf / path).read_text())


def test_dry_run_of_the_default_config_plans_the_data_rules(workflow_dir):
    proc = snakemake(workflow_dir, "-n", "--cores", "2")
    for rule in ("synthesize", "audit", "audit_cross", "prepare"):
        assert f"rule {rule}:" in proc.stdout, rule


@pytest.mark.slow
def test_data_rules_write_audits_and_a_clean_store(finished_test_sweep, tmp_path):
    # the data rules' outputs of the whole workflow on the test config (conftest), in a copy of its own
    workflow_dir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    for split, n in TEST_SIZES.items():
        audit = read(workflow_dir, f"results/audit/{split}.json")
        assert audit["n_tiles"] == n and audit["dtype"]["x"] == "uint8"
        assert audit["files"]["meta"]["found"] is True
        assert (workflow_dir / f"results/audit/{split}.png").stat().st_size > 0
        assert len(load_split(workflow_dir / "results/prepared", split)) == n  # clean data: nothing dropped
    assert read(workflow_dir, "results/audit/cross_split.json")["n_pairs"] == 0
    assert len(load_stats(workflow_dir / "results/prepared")["mean"]) == 3
    assert len(store_checksum(workflow_dir / "results/prepared")) == 64
    assert (workflow_dir / "results/benchmarks/prepare.tsv").exists()

    # block_size is a memory knob: changing it reruns nothing; a threshold changes what prepare
    # keeps, so it is another experiment: refused in these results, planned under its own name
    def planned(audit: str, *config: str, target: str = MANIFEST, check: bool = True):
        (workflow_dir / "audit.yaml").write_text(f"audit: {audit}\n")
        args = ("-n", target, "--cores", "2", "--configfile", "config/test.yaml", "audit.yaml", *config)
        return snakemake(workflow_dir, *args, check=check)

    assert "rule audit:" not in planned("{block_size: 7}").stdout
    refused = planned("{black_max: 11}", check=False)
    assert (
        refused.returncode != 0
        and "audit.black_max=10, this config has audit.black_max=11" in refused.stdout + refused.stderr
    )
    other = planned(
        "{black_max: 11}", "--config", "experiment=black11", target="results/black11/prepared/manifest.json"
    ).stdout
    assert "rule audit:" in other and "results/black11/audit/train.json" in other


@pytest.mark.slow
def test_audit_of_the_poisoned_copy_finds_every_planted_fault(workflow_dir):
    (workflow_dir / "poison.yaml").write_text(
        "synthetic: {poison: true}\n"
    )  # --config would pass 'true' as text
    snakemake(workflow_dir, MANIFEST, "--cores", "2", "--configfile", "config/test.yaml", "poison.yaml")
    planted = read(workflow_dir, "results/data/synthetic/planted.json")
    assert planted["poison"] is True
    for split, faults in planted["splits"].items():
        audit = read(workflow_dir, f"results/audit/{split}.json")
        assert audit["dtype"]["x"] == "float32" and "4x the uint8 size" in audit["size"]["reason"]
        for fault in FAULTS:
            assert faults[fault], (split, fault)  # the generator planted some of each
            assert set(faults[fault]) <= set(audit["faults"][fault]["indices"]), (split, fault)
    cross = read(workflow_dir, "results/audit/cross_split.json")
    as_pairs = {(p["split_a"], p["index_a"], p["split_b"], p["index_b"]) for p in cross["pairs"]}
    assert as_pairs == {
        (p["split_a"], p["index_a"], p["split_b"], p["index_b"]) for p in planted["cross_split_duplicates"]
    }
    # prepare dropped them from train (and only from train)
    train = load_split(workflow_dir / "results/prepared", "train")
    dropped = set(range(TEST_SIZES["train"])) - set(train.index.tolist())
    faults = planted["splits"]["train"]
    within = {d["index"] for d in planted["within_split_duplicates"] if d["split"] == "train"}
    assert within  # the generator planted repeated copies in train: prepare keeps only the first
    assert dropped == set(faults["black"]) | set(faults["white"]) | within | {
        p["index_a"] for p in planted["cross_split_duplicates"]
    }
    for split in ("valid", "test"):
        assert len(load_split(workflow_dir / "results/prepared", split)) == TEST_SIZES[split]


@pytest.mark.slow
def test_a_broken_raw_file_stops_the_audit_with_one_line_and_no_output(workflow_dir, tmp_path):
    raw_dir = tmp_path / "pcam"
    write_raw_dir(raw_dir, {"train": 4, "valid": 4, "test": 4}, dtype=np.uint8)
    broken = raw_dir / constants.raw_filename("valid", "x")
    os.truncate(broken, broken.stat().st_size // 2)
    proc = snakemake(
        workflow_dir,
        "results/audit/valid.json",
        "--cores",
        "1",
        "--configfile",
        "config/test.yaml",
        "--config",
        "dataset=pcam",
        f"data_dir={raw_dir}",
        check=False,
    )
    assert proc.returncode != 0
    errors = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pcamflow: error:")
    ]
    assert errors and errors[0].startswith(f"pcamflow: error: {broken}: unreadable HDF5 file (truncated")
    assert not list((workflow_dir / "results/audit").glob("valid*"))


@pytest.mark.slow  # real audit jobs, three times
def test_no_snakemake_command_deletes_or_overwrites_raw_files_that_were_there(workflow_dir, tmp_path):
    """PCAM files already in data_dir are the user's: -F, --forcerun download and --delete-all-output
    keep them byte for byte (none is an output of `download`, which only fetches missing files)."""
    from pcamflow.io import sha256sum

    raw_dir = tmp_path / "pcam"
    write_raw_dir(raw_dir, {"train": 4, "valid": 4, "test": 4}, dtype=np.uint8)
    before = {p.name: sha256sum(p) for p in raw_dir.iterdir()}
    config = ["--configfile", "config/test.yaml", "--config", "dataset=pcam", f"data_dir={raw_dir}"]
    # an unreachable mirror: a download attempt fails instead of fetching anything
    config.append(f"download={{'base_url': 'file://{tmp_path}/no-mirror'}}")
    listed = snakemake(workflow_dir, "--delete-all-output", "--dry-run", "--cores", "1", *config).stdout
    assert str(raw_dir) not in listed
    for force in (["-F"], ["--forcerun", "download"]):
        snakemake(workflow_dir, "results/audit/valid.json", "--cores", "1", *force, *config)
        assert {p.name: sha256sum(p) for p in raw_dir.iterdir()} == before
    snakemake(workflow_dir, "--delete-all-output", "--cores", "1", *config)
    assert {p.name: sha256sum(p) for p in raw_dir.iterdir()} == before
