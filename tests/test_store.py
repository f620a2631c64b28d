"""The prepared store is verified against its manifest before training and evaluation read it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from train_fixtures import write_manifest, write_store

from pcamflow.data.store import MANIFEST_FILE, array_path, store_checksum
from pcamflow.errors import PcamflowError
from pcamflow.evaluation.evaluate import write_champion_predictions
from pcamflow.training.train import run_training


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), {"train": 32, "valid": 16, "test": 16})


def run_config(store) -> dict:
    return {
        "data": str(store),
        "model": "cnn",
        "lr": 0.01,
        "batch_size": 16,
        "optimizer": "adam",
        "seed": 0,
        "training": {"epochs": 1, "cnn_width": 4, "mlp_hidden": [8], "threads": 1},
    }


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_y(path):
    np.save(path, np.load(path)[:-3])


def _cut_file(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _label_2(path):
    y = np.load(path)
    y[0] = 2
    np.save(path, y)


def _object_array(path):
    np.save(path, np.array([{"a": 1}] * len(np.load(path)), dtype=object), allow_pickle=True)


# (damage, file, re-hash the manifest as a careless edit would, phrase of the one line)
CASES = {
    "flipped byte in train_x": (_flip_byte, ("train", "x"), False, "sha256 differs"),
    "train_y cut short": (_truncate_y, ("train", "y"), True, "labels for 32 tiles"),
    "truncated .npy": (_cut_file, ("valid", "x"), True, "truncated"),
    "label 2": (_label_2, ("train", "y"), True, "labels [0, 1, 2]"),
    "object array": (_object_array, ("train", "index"), True, "object array"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_store_stops_training_and_evaluation_with_one_line_naming_the_file(store, tmp_path, case):
    damage, (split, array), rehash, phrase = CASES[case]
    broken = shutil.copytree(store, tmp_path / "store")
    path = array_path(broken, split, array)
    damage(path)
    if rehash:
        write_manifest(broken)
    with pytest.raises(PcamflowError) as err:
        run_training(run_config(broken), tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{path}:") and phrase in message and "\n" not in message, message
    assert not (tmp_path / "run").exists()
    if split != "train":  # evaluation reads valid and test
        with pytest.raises(PcamflowError, match=f"^{path}:"):
            write_champion_predictions(
                tmp_path / "no-champion.json",
                broken,
                tmp_path / "p.npz",
                tta=False,
                batch_size=8,
                device="cpu",
            )


def test_run_json_records_the_verified_checksum(store, tmp_path):
    run_training(run_config(store), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["data_checksum"]
    assert recorded == store_checksum(store) == json.loads((store / MANIFEST_FILE).read_text())["checksum"]
