"""Offline handover: results/handover.tar.gz, and the export and handover rules end to end on the test config."""

from __future__ import annotations

import json
import shutil
import tarfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bundle_fixtures import make_bundle
from conftest import pcamflow

from pcamflow.deployment.export import BUNDLE_FILES, CARD_FILE, META_FILE, load_bundle
from pcamflow.deployment.handover import HANDOVER_ROOT, LOCK_FILE, write_handover
from pcamflow.errors import PcamflowError

EXPECTED_MEMBERS = {
    *(f"{HANDOVER_ROOT}/model/{name}" for name in BUNDLE_FILES),
    *(f"{HANDOVER_ROOT}/{name}" for name in ("run.json", "config.yaml", LOCK_FILE, "README.md")),
}


def _extract(tar_path: Path, dest: Path) -> Path:
    with tarfile.open(tar_path) as tar:
        assert set(tar.getnames()) == EXPECTED_MEMBERS
        tar.extractall(dest, filter="data")
    return dest / HANDOVER_ROOT


def test_handover_holds_bundle_config_run_lock_and_readme(tmp_path):
    bundle = make_bundle(tmp_path / "model", threshold=0.3)
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"seed": 7}))
    tar_path = tmp_path / "handover.tar.gz"
    write_handover(tar_path, bundle, {"dataset": "synthetic", "seeds": [7]}, run_json)
    root = _extract(tar_path, tmp_path / "out")

    assert load_bundle(root / "model").threshold == 0.3  # checksums still verify after the trip
    assert json.loads((root / "run.json").read_text()) == {"seed": 7}
    assert "seeds:\n- 7" in (root / "config.yaml").read_text()
    lock = (root / LOCK_FILE).read_text().splitlines()
    assert f"torch=={version('torch')}" in lock and f"numpy=={np.__version__}" in lock
    assert not any(line.lower().startswith("pcamflow==") for line in lock)
    readme = (root / "README.md").read_text()
    assert f"pip download -r {LOCK_FILE} -d wheels/" in readme
    assert f"pip install --no-index --find-links wheels/ -r {LOCK_FILE}" in readme
    assert "pcamflow predict --model model/" in readme


def test_handover_refuses_a_damaged_bundle(tmp_path):
    bundle = make_bundle(tmp_path / "model")
    (bundle / CARD_FILE).write_text("edited by hand")
    with pytest.raises(PcamflowError, match="sha256 differs"):
        write_handover(tmp_path / "handover.tar.gz", bundle, {}, tmp_path / "run.json")
    assert not (tmp_path / "handover.tar.gz").exists()


@pytest.mark.slow
def test_export_and_bundle_rules_on_the_test_config(finished_test_sweep, tmp_path):
    """The bundle's model reproduces the evaluation's probabilities of the deployed checkpoint, its
    threshold is the evaluation's, and the card reports the evaluation's numbers (the whole workflow
    on the test config: conftest.finished_test_sweep)."""
    results = finished_test_sweep / "results"
    root = _extract(results / "handover.tar.gz", tmp_path / "handover")
    evaluation = json.loads((results / "summary" / "evaluate.json").read_text())
    deploy = evaluation["deploy"]
    meta = json.loads((root / "model" / META_FILE).read_text())
    assert meta["threshold"] == deploy["threshold"] and meta["seed"] == deploy["seed"]

    test_x = results / "data" / "synthetic" / "camelyonpatch_level_2_split_test_x.h5"
    out = tmp_path / "predictions.csv"
    pcamflow("predict", "--model", str(root / "model"), "--input", str(test_x), "--out", str(out))
    table = pd.read_csv(out)
    with np.load(results / "evaluation" / "predictions.npz") as preds:
        row = list(preds["seeds"]).index(deploy["seed"])
        np.testing.assert_allclose(table["probability"], preds["test_prob"][row], rtol=0, atol=1e-6)
        assert list(table["y_true"]) == list(preds["test_y"])
    assert list(table["label"]) == list((table["probability"] >= deploy["threshold"]).astype(int))

    card = (root / "model" / CARD_FILE).read_text()
    accuracy = deploy["test"]["validation"]["accuracy"]
    assert f"**{deploy['threshold']:.4f}**" in card
    assert f"{accuracy['value']:.3f} [{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" in card
    assert "synthetic PCAM-format data, not on real histology" in card
    assert "## Known weak slices" in card and "## Intended use" in card and "## Limits" in card
    shutil.rmtree(root)
