"""A new user's first hour (issue 20): the README's real-data commands right after the demo.

The real PCAM data is absent here: the dry run plans its download (no network is used).
"""

from __future__ import annotations

import re

import pytest
from conftest import copy_workflow, pcamflow
from test_commands import typed
from test_experiments import snapshot

REAL = {"pcam": "config/pcam.yaml", "course": "config/course.yaml"}


@pytest.fixture(scope="module")
def after_the_demo(finished_test_sweep, tmp_path_factory):
    """A finished demo in results/ (config/config.yaml is the demo's; a copy of the shared sweep)."""
    return copy_workflow(finished_test_sweep, tmp_path_factory.mktemp("first_hour") / "wf")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(REAL))
def test_the_real_data_commands_work_right_after_the_demo(after_the_demo, experiment):
    config = REAL[experiment]
    demo = snapshot(after_the_demo / "results")
    # the README's dry run, as typed in the repository root: it plans the download and the whole
    # experiment in its own results folder, beside the demo's
    plan = typed(after_the_demo, "-n", "--configfile", config).stdout
    assert "rule download:" in plan and "rule train:" in plan
    planned = set(re.findall(r"results/[^\s,]+", plan))
    assert planned and all(path.startswith(f"results/{experiment}/") for path in planned), sorted(planned)[:5]
    # `pcamflow status` reports the experiment's own runs: none done, not the demo's
    status = pcamflow("status", "--config", config, cwd=after_the_demo).stdout
    assert f"experiment '{experiment}'" in status and f"results in results/{experiment}/" in status
    counts = status.splitlines()[1]
    assert re.fullmatch(r"\d+ runs: \d+ pending", counts), counts
    assert not re.search(r" [1-9]\d*/\d+ done", status)
    assert "made with" not in status  # no clash with the demo's experiment record
    assert snapshot(after_the_demo / "results") == demo  # the demo's results untouched
