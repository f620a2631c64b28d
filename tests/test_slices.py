"""Slices of the test split (intensity, scanning centre, audit flags) and the error galleries."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from train_fixtures import write_manifest

from pcamflow.errors import PcamflowError
from pcamflow.evaluation import slices


def tiles_with_intensity(levels):
    """One uint8 tile per level (0..255), every pixel equal to it."""
    return np.stack([np.full((96, 96, 3), level, np.uint8) for level in levels])


def test_mean_intensity_is_a_fraction_of_full_scale_in_blocks(monkeypatch):
    monkeypatch.setattr(slices, "BLOCK", 2)  # several blocks for five tiles
    x = tiles_with_intensity([0, 51, 255, 128, 10])
    np.testing.assert_allclose(slices.mean_intensity(x), [0, 0.2, 1.0, 128 / 255, 10 / 255])


def test_intensity_slices_use_the_configured_thresholds():
    masks = slices.intensity_slices(np.array([0.1, 0.35, 0.5, 0.75, 0.9]), dark=0.35, bright=0.75)
    assert [m.tolist() for m in masks.values()] == [
        [True, False, False, False, False],
        [False, True, True, True, False],
        [False, False, False, False, True],
    ]
    with pytest.raises(PcamflowError, match="slices.dark"):
        slices.intensity_slices(np.zeros(2), dark=0.8, bright=0.2)


def test_centre_slices_follow_the_raw_index_into_the_meta_csv():
    meta = pd.DataFrame({"wsi": ["a"] * 6, "centre": [0, 0, 1, 1, 0, 1]})
    masks = slices.centre_slices(meta, np.array([5, 0, 2]))  # store rows -> raw rows 5, 0, 2
    assert masks["centre 0"].tolist() == [False, True, False]
    assert masks["centre 1"].tolist() == [True, False, True]
    assert slices.centre_slices(meta.drop(columns="centre"), np.array([0])) == {}  # real PCAM meta: no centre
    assert slices.centre_slices(None, np.array([0])) == {}
    with pytest.raises(PcamflowError, match="holds 6 rows"):
        slices.centre_slices(meta, np.array([9]))


def test_audit_flags_map_raw_indices_to_store_rows():
    audit = {
        "faults": {"nan": {"indices": [3]}, "black": {"indices": [7, 8]}, "white": {"indices": []}},
        "duplicates": {"groups": [[1, 4]]},
    }
    cross = {"pairs": [{"split_a": "train", "index_a": 0, "split_b": "test", "index_b": 6}]}
    flags = slices.audit_flag_indices(audit, cross, "test")
    assert flags["duplicate across splits"] == {6} and flags["duplicate within split"] == {1, 4}
    raw_index = np.array([1, 2, 4, 6, 7])  # raw row 3 (NaN) was dropped by prepare
    masks = slices.audit_slices(flags, raw_index)
    assert "nan" not in masks and "white" not in masks  # no tile of the store carries them
    assert masks["black"].tolist() == [False, False, False, False, True]
    assert masks["duplicate within split"].tolist() == [True, False, True, False, False]
    assert masks["no audit flag"].tolist() == [False, True, False, False, False]


def test_slice_metrics_equal_sklearn_and_undefined_ones_are_empty_with_a_reason():
    rng = np.random.default_rng(1)
    y = (np.arange(200) % 2).astype(bool)
    prob = np.clip(rng.random(200) * 0.7 + 0.3 * y, 0, 1)
    only_negatives = ~y
    families = {"label": {"negatives": only_negatives, "everything": np.ones(200, bool)}}
    table = slices.slices_table(y, prob, 0.5, families)
    everything = table[table.slice == "everything"].iloc[0]
    assert everything["n"] == 200 and everything["positives"] == 100 and everything["negatives"] == 100
    assert everything["recall"] == pytest.approx(skm.recall_score(y, prob >= 0.5))
    assert everything["precision"] == pytest.approx(skm.precision_score(y, prob >= 0.5))
    assert everything["f2"] == pytest.approx(skm.fbeta_score(y, prob >= 0.5, beta=2))
    assert everything["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert everything["undefined"] == ""
    negatives = table[table.slice == "negatives"].iloc[0]
    assert negatives["positives"] == 0
    assert np.isnan(negatives["recall"]) and np.isnan(negatives["roc_auc"]) and np.isnan(negatives["f2"])
    assert negatives["accuracy"] == pytest.approx(np.mean(prob[~y] < 0.5))
    assert negatives["undefined"] == "recall, f2, roc_auc: no positive labels"
    assert table.iloc[0]["slice"] == "all tiles"


def test_undefined_metrics_are_empty_cells_in_the_csv(tmp_path):
    import csv

    y = np.array([0, 0, 1, 1], bool)
    table = slices.slices_table(y, np.array([0.1, 0.2, 0.3, 0.4]), 0.9, {"x": {"negatives": ~y}})
    table.to_csv(tmp_path / "s.csv", index=False)
    with open(tmp_path / "s.csv") as fh:
        rows = {r["slice"]: r for r in csv.DictReader(fh)}
    assert rows["all tiles"]["recall"] == "0.0"  # defined and zero: no positive reaches 0.9
    assert rows["all tiles"]["precision"] == ""  # nothing predicted positive
    assert rows["negatives"]["recall"] == "" and rows["negatives"]["roc_auc"] == ""
    assert "precision: no predicted positives" in rows["all tiles"]["undefined"]
    assert (
        rows["negatives"]["undefined"]
        == "recall, f2, roc_auc: no positive labels; precision: no predicted positives"
    )


def test_confident_errors_are_the_surest_wrong_tiles():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    prob = np.array([0.05, 0.3, 0.9, 0.95, 0.6, 0.1, 0.01, 0.2])
    errors = slices.confident_errors(y, prob, threshold=0.5, k=2)
    assert errors["false_negatives"].tolist() == [6, 0]  # lowest probabilities first
    assert errors["false_positives"].tolist() == [3, 4]  # highest probabilities first
    labels = slices.gallery_labels(errors["false_negatives"], prob, np.arange(8) + 1000)
    assert labels == ["p=0.010\nraw #1006", "p=0.050\nraw #1000"]


def test_write_slices_reads_every_source_and_draws_galleries(tmp_path):
    n = 40
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    store.mkdir()
    x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    x[:5] = 10  # dark tiles
    y = (np.arange(n) % 2).astype(np.uint8)
    np.save(store / "test_x.npy", x)
    np.save(store / "test_y.npy", y)
    np.save(store / "test_index.npy", np.arange(n, dtype=np.int64))
    (store / "stats.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.2] * 3}))
    write_manifest(store)  # the slices job verifies the store against it
    prob = np.clip(rng.random(n) * 0.8 + 0.2 * y, 0, 1)
    np.savez(tmp_path / "p.npz", seeds=np.array([1, 2]), test_prob=np.stack([prob[::-1], prob]), test_y=y)
    (tmp_path / "eval.json").write_text(
        json.dumps({"deploy": {"seed": 2, "threshold": 0.5}, "target_recall": 0.95})
    )
    (tmp_path / "audit.json").write_text(json.dumps({"faults": {"black": {"indices": [0, 1]}}}))
    pd.DataFrame({"centre": np.arange(n) % 2}).to_csv(tmp_path / "meta.csv", index=False)
    out = {
        k: tmp_path / f"out_{k}" for k in ("csv", "html", "histogram", "false_negatives", "false_positives")
    }
    settings = {"dark": 0.35, "bright": 0.75, "gallery": 4}
    table = slices.write_slices(
        tmp_path / "p.npz",
        tmp_path / "eval.json",
        store,
        tmp_path / "audit.json",
        None,
        tmp_path / "meta.csv",
        settings,
        out,
    )
    assert set(table.family) == {"all", "intensity", "scanning centre", "audit flag"}
    assert table.loc[table.slice == "black", "n"].item() == 2
    assert table.loc[table.slice.str.startswith("dark"), "n"].item() == 5
    assert table.loc[table.slice == "all tiles", "recall"].item() == pytest.approx(
        np.mean(prob[y == 1] >= 0.5)
    )
    for kind in ("histogram", "false_negatives", "false_positives"):
        assert out[kind].read_bytes()[:4] == b"\x89PNG"


def test_the_intensity_histogram_draws_the_slice_thresholds_and_counts(tmp_path, monkeypatch):
    from pcamflow import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    intensity = np.array([0.1, 0.2, 0.5, 0.6, 0.9])
    plots.plot_intensity_histogram(
        intensity, np.array([0, 1, 0, 1, 1]), 0.35, 0.75, "test", tmp_path / "h.png"
    )
    (ax,) = figures[0].axes
    assert [line.get_xdata()[0] for line in ax.lines] == [0.35, 0.75]
    assert sum(patch.get_height() for bars in ax.containers for patch in bars) == 5  # every tile, once
    assert "dark 2, middle 2, bright 1" in ax.get_title()
