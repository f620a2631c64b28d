"""Config validation: defaults filled, typos and bad values rejected with a message naming the key."""

import re

import pytest
import yaml
from conftest import REPO, snakemake

from pcamflow.config import grid_points, load_schema, validate_config
from pcamflow.errors import PcamflowError


def _walk(schema, path="", defs=None):
    defs = defs or schema.get("$defs", {})
    if "$ref" in schema:  # the target, with the referring node's own keys (default) on top
        schema = {
            **defs[schema["$ref"].rsplit("/", 1)[-1]],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}".lstrip("."), defs)


def test_every_key_has_description_type_and_default():
    for path, node in _walk(load_schema()):
        if not path:
            continue
        assert "description" in node, path
        assert "type" in node, path
        assert "default" in node, path
        if node["type"] == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "pcam.yaml"])
def test_shipped_configs_validate(name):
    validate_config(yaml.safe_load((REPO / "config" / name).read_text()))


def test_defaults_are_filled():
    cfg = validate_config({})
    assert cfg["dataset"] == "synthetic"
    assert cfg["training"]["epochs"] >= 1
    assert cfg["evaluate"]["target_recall"] == 0.95


def test_typo_names_the_key():
    with pytest.raises(PcamflowError, match=r"unknown key 'epoch' in 'training'"):
        validate_config({"training": {"epoch": 3}})


def test_top_level_typo_names_the_key():
    with pytest.raises(PcamflowError, match=r"unknown key 'sedes'"):
        validate_config({"sedes": [1]})


def test_bad_value_names_the_key():
    with pytest.raises(PcamflowError, match=r"grid.model.0.*'vgg'"):
        validate_config({"grid": {"model": ["vgg"]}})


def test_empty_grid_and_seed_lists_are_rejected():
    with pytest.raises(PcamflowError, match=r"'seeds'.*empty"):
        validate_config({"seeds": []})
    with pytest.raises(PcamflowError, match=r"'grid.lr'.*empty"):
        validate_config({"grid": {"lr": []}})


def test_dark_above_bright_fails_at_validation():
    with pytest.raises(PcamflowError, match=r"'slices.dark' \(0.8\) and 'slices.bright' \(0.75\)"):
        validate_config({"slices": {"dark": 0.8}})
    validate_config({"slices": {"dark": 0.5, "bright": 0.5}})  # equal is allowed: an empty middle slice


def test_snakemake_rejects_dark_above_bright_before_any_job(workflow_dir, tmp_path):
    (tmp_path / "slices.yaml").write_text(yaml.safe_dump({"slices": {"dark": 0.9, "bright": 0.2}}))
    proc = snakemake(workflow_dir, "-n", "--configfile", str(tmp_path / "slices.yaml"), check=False)
    assert proc.returncode != 0
    assert "dark must not exceed bright" in proc.stdout + proc.stderr
    assert not (workflow_dir / "results").exists()


def test_grid_points_are_the_full_product():
    cfg = validate_config({"grid": {"model": ["mlp", "cnn"], "lr": [0.1, 0.01], "optimizer": ["adam"]}})
    points = grid_points(cfg)
    assert len(points) == 4
    assert {p["model"] for p in points} == {"mlp", "cnn"}
    assert all(p["batch_size"] == 64 for p in points)


def test_snakemake_rejects_typo_before_any_job(workflow_dir):
    proc = snakemake(workflow_dir, "-n", "--config", "training={'epoch': 3}", check=False)
    assert proc.returncode != 0
    assert "unknown key 'epoch' in 'training'" in proc.stdout + proc.stderr
    assert not (workflow_dir / "results").exists()


def test_dry_run_of_default_config_plans_one_train_job_per_run(workflow_dir):
    cfg = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    proc = snakemake(workflow_dir, "-n", "--quiet", "rules")  # raises when Snakemake cannot plan
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert int(counts["train"]) == len(grid_points(cfg)) * len(cfg["seeds"])
    assert int(counts["throughput"]) == len(cfg["partitions"])


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"seeds": [1, 1]}, "key 'seeds': [1, 1] has non-unique elements"),
        ({"grid": {"lr": [1, 1.0]}}, "key 'grid.lr': [1, 1.0] has non-unique elements"),
        ({"seeds": [1.0]}, "key 'seeds.0': 1.0 is not a whole number"),
        ({"seeds": [2**64]}, f"key 'seeds.0': {2**64} is greater than the maximum"),
        ({"grid": {"lr": [float("inf")]}}, "key 'grid.lr.0': inf is not a finite number"),
        ({"grid": {"lr": [float("nan")]}}, "key 'grid.lr.0': nan is not a finite number"),
        (
            {"synthetic": {"n_train": 100}, "grid": {"batch_size": [64, 128]}},
            "key 'grid.batch_size': 128 is larger than the train split (100 tiles)",
        ),
    ],
)
def test_values_the_workflow_cannot_handle_are_refused_in_one_line(override, phrase):
    with pytest.raises(PcamflowError) as err:
        validate_config(override)
    assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)
