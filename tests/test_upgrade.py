"""A `git pull` of pcamflow never retrains a finished sweep: the rule scripts' dates are no trigger."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from conftest import copy_workflow, snakemake


@pytest.mark.slow
def test_a_pull_that_edits_every_rule_script_plans_nothing(finished_test_sweep, tmp_path):
    workdir = copy_workflow(finished_test_sweep, tmp_path / "wf")
    scripts = workdir / "workflow_scripts"
    target = scripts.resolve()
    scripts.unlink()  # a copy of its own, so the checkout's scripts keep their dates
    shutil.copytree(target, scripts)
    later = time.time() + 60
    for script in scripts.glob("*.py"):  # as a pull that edited them would leave them
        os.utime(script, (later, later))
    plan = snakemake(workdir, "--dry-run", "--configfile", "config/test.yaml").stdout
    assert "Nothing to be done" in plan, plan
