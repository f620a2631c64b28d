"""Checkpoints load weights-only, refuse files that would run code, and restore every RNG."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from pcamflow.errors import PcamflowError
from pcamflow.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from pcamflow.training.models import build_model

RUN_CONFIG = {"model": "mlp", "training": {"mlp_hidden": [8], "dropout": 0.0}}


def draws():
    return (random.random(), np.random.random(), torch.rand(3).tolist())


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    model = build_model("mlp", RUN_CONFIG["training"])
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "rng": capture_rng_state()})
    expected = draws()
    draws()  # move every generator on
    state = load_checkpoint(tmp_path / "c.pt")
    restore_rng_state(state["rng"])
    assert draws() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_load_model_returns_the_weights_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", RUN_CONFIG["training"])
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "run_config": RUN_CONFIG})
    loaded, run_config = load_model(tmp_path / "best.pt")
    assert run_config == RUN_CONFIG
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_model_never_asks_for_the_pretrained_weights_it_overwrites(tmp_path, monkeypatch):
    import torchvision

    model = build_model("resnet18", {"pretrained": False})
    run_config = {"model": "resnet18", "training": {"pretrained": True}}  # as trained from ImageNet
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "run_config": run_config})

    def no_download(self, *args, **kwargs):
        raise AssertionError("ImageNet weights requested by load_model")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_download)
    loaded, _ = load_model(tmp_path / "best.pt")
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.state_dict()[first], model.state_dict()[first])


def test_a_checkpoint_of_another_format_is_one_clear_line(tmp_path):
    model = build_model("mlp", RUN_CONFIG["training"])
    save_checkpoint(tmp_path / "best.pt", {"model": model.state_dict(), "run_config": RUN_CONFIG})
    state = load_checkpoint(tmp_path / "best.pt")
    torch.save(dict(state, format_version=99), tmp_path / "future.pt")
    with pytest.raises(
        PcamflowError, match=r"future\.pt: checkpoint format 99, this pcamflow reads format 1"
    ):
        load_checkpoint(tmp_path / "future.pt")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_that_would_run_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(PcamflowError, match="evil.pt: refused to load") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()

    with open(tmp_path / "plain_pickle.pt", "wb") as fh:
        pickle.dump(_RunsCode(str(marker)), fh)
    with pytest.raises(PcamflowError, match="plain_pickle.pt: refused to load"):
        load_checkpoint(tmp_path / "plain_pickle.pt")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_and_missing_checkpoints_are_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PcamflowError, match="junk.pt: "):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(PcamflowError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(PcamflowError, match="not a pcamflow checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
