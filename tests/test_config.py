"""Config validation: defaults filled, typos and bad values rejected with a message naming the key."""

import re
import subprocess

import pytest
import yaml
from conftest import REPO, snakemake
from test_sweep_workflow import planned_outputs

from pcamflow.config import grid_points, load_schema, load_workflow_config, validate_config
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


# ---- --config overrides on the command line, as the README documents them ----
# Snakemake hands the text inside a list or mapping over as strings (seeds='[1,2]' -> ['1', '2']);
# the schema's types are applied before validation.
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
DEFAULT_POINTS = 2  # config/config.yaml: 2 models x 1 lr x 1 batch size x 1 optimizer


def planned_train_outputs(workflow_dir, *overrides) -> list[str]:
    return planned_outputs(workflow_dir, "train", "--config", *overrides)


def test_override_seeds(workflow_dir):
    outputs = planned_train_outputs(workflow_dir, "seeds=[1,2]")
    assert len(outputs) == DEFAULT_POINTS * 2
    assert {re.search(r"/seed~(\d+)/", o)[1] for o in outputs} == {"1", "2"}
    assert load_workflow_config(overrides=["seeds=[1,2]"], base=DEFAULT_CONFIG)["seeds"] == [1, 2]


def test_override_grid(workflow_dir):
    override = "grid={model: [cnn], lr: [0.001, 1e-4]}"
    outputs = planned_train_outputs(workflow_dir, override)
    assert len(outputs) == 2 * 1 * 3  # 2 learning rates x the config's 1 optimizer x 3 seeds
    assert {re.search(r"/lr~([^/]+)/", o)[1] for o in outputs} == {"0.001", "0.0001"}
    assert all("/model~cnn/" in o for o in outputs)
    grid = load_workflow_config(overrides=[override], base=DEFAULT_CONFIG)["grid"]
    assert grid["lr"] == [0.001, 0.0001] and grid["optimizer"] == ["adam"]  # merged, typed


def test_override_training(workflow_dir):
    override = "training={epochs: 3, amp: bf16, nesterov: false, mlp_hidden: [64, 32]}"
    assert len(planned_train_outputs(workflow_dir, override)) == DEFAULT_POINTS * 3
    training = load_workflow_config(overrides=[override], base=DEFAULT_CONFIG)["training"]
    assert (training["epochs"], training["amp"], training["nesterov"]) == (3, "bf16", False)
    assert training["mlp_hidden"] == [64, 32] and training["cnn_width"] == 8  # the rest from the file


def test_override_experiment(workflow_dir):
    outputs = planned_train_outputs(workflow_dir, "experiment=trial")
    assert len(outputs) == DEFAULT_POINTS * 3
    assert all(o.startswith("results/trial/runs/model~") for o in outputs)


@pytest.mark.parametrize(
    "override, message",
    [
        ("seeds=[1,x]", "key 'seeds.1': 'x' is not of type 'integer'"),
        ("grid={lr: [fast]}", "key 'grid.lr.0': 'fast' is not of type 'number'"),
        ("training={epochs: three}", "key 'training.epochs': 'three' is not of type 'integer'"),
        ("training={nesterov: maybe}", "key 'training.nesterov': 'maybe' is not of type 'boolean'"),
        ("experiment=runs", "config key 'experiment': 'runs' is the name of a folder in results/"),
    ],
)
def test_a_wrong_override_is_one_line_naming_the_key(workflow_dir, override, message):
    proc = snakemake(workflow_dir, "-n", "--config", override, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (workflow_dir / "results").exists()


def test_the_schema_exists_once_and_everything_points_to_it():
    """One schema file: no second copy anywhere in the repository, and no file names another."""
    from pcamflow.config import SCHEMA_PATH

    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    schemas = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and (
                "$schema" in data or data.get("title") == "pcamflow configuration"
            ):
                schemas.append(path.resolve())
    assert schemas == [SCHEMA_PATH.resolve()]
    schema_name = SCHEMA_PATH.relative_to(REPO / "src").as_posix()  # pcamflow/schema.yaml
    for name in tracked:
        path = REPO / name
        if path.is_file() and path.suffix in (".yaml", ".md", ".py", ".smk", ".rst", ".toml"):
            for line in path.read_text(errors="replace").splitlines():
                for mention in re.findall(r"[\w./-]*schema\.yaml", line):
                    assert mention.endswith(schema_name) or mention == "schema.yaml", (
                        f"{name}: {line.strip()}"
                    )
