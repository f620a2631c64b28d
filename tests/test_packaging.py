"""The conda environment and pyproject.toml pin the same versions and the environment installs
pcamflow itself; the console script exists."""

import os
import subprocess
import sysconfig
import tomllib
import venv
from pathlib import Path

import yaml
from conftest import REPO, pcamflow


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(dep.split("==") for dep in deps)


def _conda_pip_block() -> list[str]:
    env = yaml.safe_load((REPO / "envs" / "pcamflow.yaml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def _conda_pins() -> dict[str, str]:
    return dict(dep.split("==") for dep in _conda_pip_block() if "==" in dep)


def test_every_direct_dependency_is_pinned_exactly():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in dep for dep in deps), deps


def test_conda_environment_pins_equal_pyproject():
    assert _conda_pins() == _pyproject_pins()


def test_console_script_lists_subcommands():
    out = pcamflow("--help").stdout
    for command in ("synth", "audit", "prepare", "train", "throughput", "download", "cost", "predict"):
        assert command in out


def test_conda_environment_installs_pcamflow_from_the_workflow(tmp_path):
    """What conda does with the environment's pip block (a requirements file, PCAMFLOW_ROOT set by
    rules/common.smk), in a Python that has the pinned packages but no pcamflow: afterwards a rule's
    interpreter imports pcamflow from the workflow's source, with no PYTHONPATH."""
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the pinned packages stand in for conda's install of them: a plain path line, so the .pth files
    # there (this checkout's own pcamflow install among them) are not processed
    (Path(site) / "pinned.pth").write_text(sysconfig.get_path("purelib") + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    import_pcamflow = [python, "-c", "import pcamflow, sys; sys.stdout.write(pcamflow.__file__)"]
    assert subprocess.run(import_pcamflow, capture_output=True, env=clean, cwd=tmp_path).returncode != 0
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(line for line in _conda_pip_block() if "==" not in line) + "\n")
    pip = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-r", requirements]
    subprocess.run(pip, check=True, env=dict(clean, PCAMFLOW_ROOT=str(REPO)), cwd=tmp_path, timeout=300)
    found = subprocess.run(
        import_pcamflow, capture_output=True, text=True, env=clean, cwd=tmp_path, check=True
    )
    assert Path(found.stdout).resolve() == (REPO / "src" / "pcamflow" / "__init__.py").resolve()
