"""Drift check: the distances are right, a shifted stain warns with its numbers, the test split does not."""

from __future__ import annotations

import numpy as np
import pytest
from bundle_fixtures import drift_thresholds, make_bundle, synthetic_tiles
from conftest import pcamflow
from pcam_fixtures import write_split

from pcamflow.deployment.drift import (
    HistogramAccumulator,
    compare,
    histogram_moments,
    make_reference,
    wasserstein1,
)

N_TRAIN = 256  # make_bundle's reference


def _histogram(tiles):
    acc = HistogramAccumulator()
    acc.update(tiles)
    return acc


def _reference():
    acc = _histogram(synthetic_tiles("train", N_TRAIN)[0])
    return make_reference(acc.counts, acc.n_tiles, drift_thresholds())


def shift_stain(tiles: np.ndarray, factors) -> np.ndarray:
    """Scale each channel's optical density (Beer-Lambert): stronger or paler staining, as between labs."""
    od = -np.log((tiles.astype(np.float64) + 1) / 256)
    return np.clip(256 * np.exp(-od * np.asarray(factors)) - 1, 0, 255).round().astype(np.uint8)


def test_wasserstein_matches_scipy_and_a_uniform_shift():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, (3, 256)), rng.integers(0, 50, (3, 256))
    levels = np.arange(256)
    expected = [wasserstein_distance(levels, levels, a[c], b[c]) / 255 for c in range(3)]
    np.testing.assert_allclose(wasserstein1(a, b), expected, rtol=1e-9)
    tiles = rng.integers(0, 200, (4, 96, 96, 3), dtype=np.uint8)
    shifted = _histogram(tiles + 13).counts
    np.testing.assert_allclose(wasserstein1(_histogram(tiles).counts, shifted), 13 / 255)


def test_histogram_moments_are_the_pixel_mean_and_std():
    tiles = synthetic_tiles("test", 256)[0][:20]
    mean, std = histogram_moments(_histogram(tiles).counts)
    pixels = tiles.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)


def test_test_split_is_not_drift():
    test = _histogram(synthetic_tiles("test", 256)[0])
    report = compare(_reference(), test.counts, test.n_tiles)
    assert report.checked and not report.drifted, report.summary()


@pytest.mark.parametrize("factors", [(1.0, 1.3, 1.0), (0.7, 0.7, 0.7), (1.4, 1.2, 1.3)])
def test_shifted_stain_is_drift_with_its_numbers(factors):
    test = _histogram(shift_stain(synthetic_tiles("test", 256)[0], factors))
    report = compare(_reference(), test.counts, test.n_tiles)
    assert report.drifted
    summary = report.summary()
    assert "DRIFT WARNING" in summary
    worst = int(np.argmax(report.w1))
    assert f"w1 {report.w1[worst]:.3f} > {drift_thresholds()['w1_max']}" in summary
    assert f"mean {report.mean[worst]:.3f} vs train" in summary


def test_lower_contrast_is_drift_through_the_std_ratio():
    tiles = synthetic_tiles("test", 256)[0].astype(np.float64)
    mean = tiles.mean(axis=(0, 1, 2))
    flat = _histogram(((tiles - mean) * 0.7 + mean).round().astype(np.uint8))
    report = compare(_reference(), flat.counts, flat.n_tiles)
    assert any("std ratio 0.7" in reason for reason in report.reasons), report.summary()


def test_too_few_tiles_are_not_judged():
    few = _histogram(shift_stain(synthetic_tiles("test", 256)[0][:10], (2.0, 2.0, 2.0)))
    report = compare(_reference(), few.counts, few.n_tiles)
    assert not report.checked and not report.drifted
    assert "too few" in report.summary()


def test_predict_warns_on_shifted_stain_and_not_on_the_test_split(tmp_path):
    """What a user sees: the warning (with numbers) on stderr of `pcamflow predict`, or its absence."""
    bundle = make_bundle(tmp_path / "bundle", n_train=N_TRAIN)
    x, y = synthetic_tiles("test", 256)
    outputs = {}
    for name, tiles in (("test", x), ("stained", shift_stain(x, (1.0, 1.3, 1.0)))):
        write_split(tmp_path / name, "test", tiles, y)
        h5 = tmp_path / name / "camelyonpatch_level_2_split_test_x.h5"
        outputs[name] = pcamflow(
            "predict", "--model", str(bundle), "--input", str(h5), "--out", str(tmp_path / f"{name}.csv")
        )
    assert "DRIFT WARNING" not in outputs["test"].stderr
    assert "drift check passed on 256 tiles" in outputs["test"].stderr
    assert "DRIFT WARNING" in outputs["stained"].stderr
    assert "G w1 0." in outputs["stained"].stderr


def test_a_couple_of_dozen_tiles_of_another_stain_warn_and_in_distribution_ones_stay_quiet():
    """Small inputs are judged on gross changes: 25 tiles of a different stain warn; random 25-tile
    batches of the test split stay quiet; fewer than min_tiles_gross say they are too small to judge."""
    x = synthetic_tiles("test", 1000)[0]
    stained = _histogram(shift_stain(x[:25], (0.5, 0.5, 0.5)))
    report = compare(_reference(), stained.counts, stained.n_tiles)
    assert report.checked and report.drifted, report.summary()
    assert "DRIFT WARNING" in report.summary() and "25 tiles" in report.summary()
    rng = np.random.default_rng(0)
    for _ in range(50):
        batch = _histogram(x[rng.choice(len(x), 25, replace=False)])
        report = compare(_reference(), batch.counts, batch.n_tiles)
        assert report.checked and not report.drifted, report.summary()
    tiny = _histogram(shift_stain(x[:5], (0.5, 0.5, 0.5)))
    assert "too small to judge" in compare(_reference(), tiny.counts, tiny.n_tiles).summary()
