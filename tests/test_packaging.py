"""The conda environment and pyproject.toml pin the same versions; the console script exists."""

import tomllib

import yaml
from conftest import REPO, pcamflow


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(dep.split("==") for dep in deps)


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs" / "pcamflow.yaml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return dict(dep.split("==") for dep in pip_block)


def test_every_direct_dependency_is_pinned_exactly():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in dep for dep in deps), deps


def test_conda_environment_pins_equal_pyproject():
    assert _conda_pins() == _pyproject_pins()


def test_console_script_lists_subcommands():
    out = pcamflow("--help").stdout
    for command in ("synth", "audit", "prepare", "train", "throughput", "download", "cost", "predict"):
        assert command in out
