"""CI where users look for it: .github/workflows/ci.yml runs the README's `make test` on every pushed
branch, as .ci/run does, with pip and numba caches, and is a valid GitHub Actions workflow (GitHub's
workflow schema, as vendored by check-jsonschema)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def schema_check(path: Path) -> subprocess.CompletedProcess:
    assert CHECK_JSONSCHEMA.exists(), f"{CHECK_JSONSCHEMA} missing: pip install -e '.[test]' (make test does)"
    cmd = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_the_github_workflow_is_valid(tmp_path):
    check = schema_check(WORKFLOW)
    assert check.returncode == 0, check.stdout + check.stderr
    # the check catches a broken workflow (a misspelt key)
    broken = tmp_path / "ci.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:"))
    assert schema_check(broken).returncode != 0


def test_the_github_workflow_runs_make_test_on_every_push_with_pip_and_numba_caches():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and not (triggers["push"] or {}).get("branches")  # every branch
    job = workflow["jobs"]["test"]
    assert [step["run"] for step in job["steps"] if "run" in step] == ["make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()  # the same command as the course's CI
    cached = {
        step["with"]["path"] for step in job["steps"] if step.get("uses", "").startswith("actions/cache@")
    }
    workspace = "${{ github.workspace }}/"
    assert {job["env"]["PIP_CACHE_DIR"], job["env"]["NUMBA_CACHE_DIR"]} == {workspace + p for p in cached}
