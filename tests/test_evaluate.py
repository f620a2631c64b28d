"""The champion's test evaluation: validation threshold, bootstrap intervals, seed means, baselines."""

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from train_fixtures import write_manifest

from pcamflow import metrics
from pcamflow.data.predictions import predict_proba
from pcamflow.errors import PcamflowError
from pcamflow.evaluation import evaluate as ev
from pcamflow.training.checkpoint import save_checkpoint
from pcamflow.training.models import build_model

SETTINGS = {"target_recall": 0.9, "tta": False, "bootstrap": 60, "ci": 0.95, "seed": 3}


def scores(n, seed, strength=0.35):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.uint8)
    prob = np.clip(rng.random(n) * 0.7 + strength * y, 0, 1)
    return y, prob


def fake_predictions(n_valid=200, n_test=300, seeds=(1, 2, 3), tta=False):
    valid_y, _ = scores(n_valid, 0)
    test_y, _ = scores(n_test, 0)
    preds = {
        "valid_y": valid_y,
        "test_y": test_y,
        "seeds": np.array(seeds),
        "test_index": np.arange(n_test) + 100,
    }
    for suffix in ("", "_tta") if tta else ("",):
        preds[f"valid_prob{suffix}"] = np.stack([scores(n_valid, 10 + s + len(suffix))[1] for s in seeds])
        preds[f"test_prob{suffix}"] = np.stack([scores(n_test, 20 + s + len(suffix))[1] for s in seeds])
    return preds


def fake_champion(seeds=(1, 2, 3), deploy=2):
    return {
        "id": "model~cnn/lr~0.001/batch_size~64/optimizer~adam",
        "grid_point": {"model": "cnn"},
        "seeds": [{"seed": s, "checkpoint": f"runs/seed~{s}/checkpoint_best.pt"} for s in seeds],
        "deploy": {"seed": deploy, "checkpoint": f"runs/seed~{deploy}/checkpoint_best.pt"},
    }


def value(table, predictor, member, threshold, metric, column="value"):
    rows = table[
        (table.predictor == predictor)
        & (table.member == member)
        & (table.threshold_name == threshold)
        & (table.metric == metric)
    ]
    assert len(rows) == 1, (predictor, member, threshold, metric)
    return rows.iloc[0][column]


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_threshold_is_the_highest_that_reaches_the_target_recall(target, seed):
    y, prob = scores(101, seed)
    t = ev.threshold_for_recall(y, prob, target)
    assert skm.recall_score(y, prob >= t) >= target
    above = np.unique(prob[prob > t])
    if above.size:  # the next higher threshold misses the target
        assert skm.recall_score(y, prob >= above.min()) < target


def test_threshold_needs_positives_on_validation():
    with pytest.raises(PcamflowError, match="no positive"):
        ev.threshold_for_recall(np.zeros(10), np.linspace(0, 1, 10), 0.95)


def test_bootstrap_interval_is_the_percentile_of_resampled_metrics():
    y, prob = scores(150, 4)
    model = ev.Predictions("m", "", prob, {ev.AT_HALF: 0.5})
    boot = ev.bootstrap_metrics(y, [model], n_boot=40, seed=7)
    table = ev.summarise(y, [model], boot, ci=0.9)
    rng = np.random.default_rng(7)  # the same resamples, recomputed with scikit-learn
    aucs, f2s = [], []
    for _ in range(40):
        idx = rng.integers(0, y.size, size=y.size)
        aucs.append(skm.roc_auc_score(y[idx], prob[idx]))
        f2s.append(skm.fbeta_score(y[idx], prob[idx] >= 0.5, beta=2))
    assert value(table, "m", "", ev.AT_HALF, "roc_auc", "ci_low") == pytest.approx(np.quantile(aucs, 0.05))
    assert value(table, "m", "", ev.AT_HALF, "roc_auc", "ci_high") == pytest.approx(np.quantile(aucs, 0.95))
    assert value(table, "m", "", ev.AT_HALF, "f2", "ci_high") == pytest.approx(np.quantile(f2s, 0.95))
    assert value(table, "m", "", ev.AT_HALF, "roc_auc") == pytest.approx(skm.roc_auc_score(y, prob))


def test_each_resample_holds_the_metrics_of_its_tiles_exactly():
    """Every bootstrap row equals binary_metrics of the resampled tiles, bit for bit (NaN where undefined)."""
    y, prob = scores(150, 5)
    models = [
        ev.Predictions("m", "", prob, {ev.AT_HALF: 0.5, ev.AT_VALIDATION: 0.3}),
        ev.Predictions("always positive", "", np.ones(y.size), {ev.AT_HALF: 0.5}),
    ]
    boot = ev.bootstrap_metrics(y, models, n_boot=20, seed=9)
    rng = np.random.default_rng(9)  # the same resamples
    for b in range(20):
        idx = rng.integers(0, y.size, size=y.size)
        for model, samples in zip(models, boot):
            for t, threshold in model.thresholds.items():
                expected = metrics.binary_metrics(y[idx], model.prob[idx], threshold)
                want = [np.nan if expected[k] is None else expected[k] for k in ev.METRICS]
                np.testing.assert_array_equal(samples[t][b], want)


def test_bootstrap_is_reproducible_from_its_seed_and_changes_with_it():
    preds = fake_predictions()
    a, _ = ev.evaluate_champion(preds, fake_champion(), np.zeros(10), SETTINGS)
    b, _ = ev.evaluate_champion(preds, fake_champion(), np.zeros(10), SETTINGS)
    c, _ = ev.evaluate_champion(preds, fake_champion(), np.zeros(10), dict(SETTINGS, seed=4))
    assert a.equals(b)
    assert not a["ci_low"].equals(c["ci_low"])


def test_champion_row_is_mean_and_std_over_seeds_with_thresholds_from_validation():
    preds = fake_predictions()
    table, summary = ev.evaluate_champion(preds, fake_champion(), np.zeros(10), SETTINGS)
    per_seed = []
    for i, seed in enumerate((1, 2, 3)):
        t = ev.threshold_for_recall(preds["valid_y"], preds["valid_prob"][i], SETTINGS["target_recall"])
        assert summary["thresholds"][i]["threshold"] == t
        assert summary["thresholds"][i]["valid_recall"] >= SETTINGS["target_recall"]
        f2 = skm.fbeta_score(preds["test_y"], preds["test_prob"][i] >= t, beta=2)  # applied unchanged to test
        assert value(table, "champion", f"seed {seed}", ev.AT_VALIDATION, "f2") == pytest.approx(f2)
        per_seed.append(skm.roc_auc_score(preds["test_y"], preds["test_prob"][i]))
    assert value(table, "champion", ev.MEAN, ev.AT_HALF, "roc_auc") == pytest.approx(np.mean(per_seed))
    assert value(table, "champion", ev.MEAN, ev.AT_HALF, "roc_auc", "std") == pytest.approx(
        np.std(per_seed, ddof=1)
    )
    low, high = (value(table, "champion", ev.MEAN, ev.AT_HALF, "roc_auc", c) for c in ("ci_low", "ci_high"))
    assert low < np.mean(per_seed) < high
    assert summary["deploy"]["seed"] == 2
    assert summary["deploy"]["test"][ev.AT_VALIDATION]["threshold"] == summary["deploy"]["threshold"]
    cm = np.array(summary["confusion"][ev.AT_HALF]["seed 1"])
    assert cm.tolist() == skm.confusion_matrix(preds["test_y"], preds["test_prob"][0] >= 0.5).tolist()


def test_baselines_always_positive_and_majority_class():
    preds = fake_predictions(n_test=400)  # balanced test split
    table, summary = ev.evaluate_champion(preds, fake_champion(), np.array([0, 0, 1]), SETTINGS)
    assert value(table, "always positive", "", ev.AT_HALF, "f2") == pytest.approx(
        5 * 0.5 / (4 * 0.5 + 1)
    )  # 0.833
    assert value(table, "always positive", "", ev.AT_HALF, "recall") == 1.0
    assert value(table, "always positive", "", ev.AT_HALF, "roc_auc") == 0.5
    majority = "majority class (negative in train)"
    assert value(table, majority, "", ev.AT_HALF, "accuracy") == 0.5
    assert value(table, majority, "", ev.AT_HALF, "recall") == 0.0
    assert np.isnan(value(table, majority, "", ev.AT_HALF, "precision"))
    assert value(table, majority, "", ev.AT_HALF, "precision", "undefined") == "no predicted positives"
    assert set(summary["metrics"]) == {"champion", majority, "always positive"}


def test_majority_class_comes_from_train_labels_and_a_tie_is_negative():
    assert ev.majority_class(np.array([1, 1, 0])) == 1
    assert ev.majority_class(np.array([1, 0])) == 0


def test_single_class_test_split_leaves_undefined_metrics_empty_with_a_reason():
    preds = fake_predictions()
    preds["test_y"] = np.zeros_like(preds["test_y"])
    table, _ = ev.evaluate_champion(preds, fake_champion(), np.zeros(4), SETTINGS)
    auc = table[(table.metric == "roc_auc") & (table.predictor == "champion")]
    assert auc["value"].isna().all() and auc["ci_low"].isna().all()
    assert set(auc["undefined"]) == {"no positive labels"}
    accuracy = table[(table.metric == "accuracy") & (table.predictor == "champion")]
    assert accuracy["value"].notna().all()


def test_tta_adds_the_plain_predictions_for_comparison():
    table, summary = ev.evaluate_champion(
        fake_predictions(tta=True), fake_champion(), np.zeros(4), dict(SETTINGS, tta=True)
    )
    assert {"champion", "champion without TTA"} <= set(table.predictor)
    assert "TTA" in summary["predictions"]


def test_write_evaluation_writes_tables_and_figures(tmp_path):
    np.savez(tmp_path / "p.npz", **fake_predictions())
    (tmp_path / "champion.json").write_text(json.dumps(fake_champion()))
    np.save(tmp_path / "train_y.npy", np.array([0, 1, 1], np.uint8))
    out = {k: tmp_path / f"out.{k}" for k in ("json", "csv", "html", "confusion", "curves")}
    ev.write_evaluation(
        tmp_path / "p.npz", tmp_path / "champion.json", tmp_path / "train_y.npy", SETTINGS, out
    )
    summary = json.loads(out["json"].read_text())
    assert summary["deploy"]["seed"] == 2 and summary["bootstrap"]["resamples"] == 60
    page = out["html"].read_text()
    assert "always positive" in page and "majority class (positive in train)" in page and "(deployed)" in page
    for name in ("confusion", "curves"):
        assert out[name].read_bytes()[:4] == b"\x89PNG"


def test_missing_predictions_is_a_clear_error(tmp_path):
    with pytest.raises(PcamflowError, match="predictions missing"):
        ev.load_predictions(tmp_path / "none.npz")


def tiny_store(root, n=12):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split in ("valid", "test"):
        np.save(root / f"{split}_x.npy", rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
        np.save(root / f"{split}_y.npy", (np.arange(n) % 2).astype(np.uint8))
        np.save(root / f"{split}_index.npy", np.arange(n, dtype=np.int64) * 2)
    (root / "stats.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    return write_manifest(root)  # evaluation verifies the store against it


def test_predictions_are_made_once_per_checkpoint_with_the_pipeline(tmp_path):
    store = tiny_store(tmp_path / "store")
    champion = fake_champion(seeds=(5, 6), deploy=5)
    models = {}
    for entry in champion["seeds"]:
        torch.manual_seed(entry["seed"])
        run_config = {"model": "mlp", "training": {"mlp_hidden": [4], "dropout": 0.0}}
        models[entry["seed"]] = build_model("mlp", run_config["training"]).eval()
        entry["checkpoint"] = str(tmp_path / f"{entry['seed']}.pt")
        save_checkpoint(
            entry["checkpoint"], {"model": models[entry["seed"]].state_dict(), "run_config": run_config}
        )
    (tmp_path / "champion.json").write_text(json.dumps(champion))
    ev.write_champion_predictions(
        tmp_path / "champion.json", store, tmp_path / "p.npz", tta=True, batch_size=5, device="cpu"
    )
    preds = ev.load_predictions(tmp_path / "p.npz")
    x = np.load(store / "test_x.npy")
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert preds["test_prob"].shape == (2, 12) and preds["valid_prob_tta"].shape == (2, 12)
    np.testing.assert_allclose(preds["test_prob"][1], predict_proba(models[6], x, stats))
    np.testing.assert_allclose(preds["test_prob_tta"][0], predict_proba(models[5], x, stats, tta=True))
    assert preds["seeds"].tolist() == [5, 6]
    assert preds["test_index"].tolist() == list(range(0, 24, 2))
