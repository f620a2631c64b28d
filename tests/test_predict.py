"""`pcamflow predict`: every input kind, one row per tile, failures listed and not fatal, exit codes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from bundle_fixtures import make_bundle, stats_of, synthetic_tiles, tiny_model
from pcam_fixtures import write_dataset, write_split
from PIL import Image

from pcamflow.data.predictions import predict_proba
from pcamflow.data.rawdata import clean_tiles
from pcamflow.deployment.export import META_FILE, load_bundle
from pcamflow.deployment.predict import COLUMNS, predict_inputs, predict_tiles

N = 10


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    # threshold at the median probability of the tiles used here, so both labels occur
    tmp = tmp_path_factory.mktemp("predict")
    probe = make_bundle(tmp / "probe")
    threshold = float(np.median(predict_tiles(load_bundle(probe), _tiles()[0])))
    return make_bundle(tmp / "bundle", threshold=threshold)


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


def _tiles(n=N):
    x, y = synthetic_tiles("test", 256)
    return x[:n], y[:n]


def _h5(tmp_path: Path, x, y=None) -> Path:
    """A PCAM test split file; with y, its labels file beside it."""
    if y is None:
        return write_dataset(tmp_path / "camelyonpatch_level_2_split_test_x.h5", "x", x)
    return write_split(tmp_path, "test", x, y)[0]


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str  # stderr and log lines
    table: pd.DataFrame | None  # the CSV written, if any


@pytest.fixture
def predict(capsys, caplog):
    """`pcamflow predict BUNDLE OUT INPUTS... [extra]` through pcamflow.cli.main, in this process
    (a new interpreter per call would spend seconds importing torch)."""
    import logging

    from pcamflow.cli import main

    def run(bundle_dir, out, *inputs, extra=()) -> Run:
        argv = [
            "predict",
            "--model",
            str(bundle_dir),
            "--out",
            str(out),
            "--input",
            *map(str, inputs),
            *extra,
        ]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            status = main(argv)
        captured = capsys.readouterr()
        table = pd.read_csv(out) if Path(out).exists() else None
        return Run(status, captured.out, captured.err + caplog.text, table)

    return run


def test_h5_with_labels_gives_one_row_per_tile(bundle_dir, bundle, tmp_path, predict):
    x, y = _tiles()
    h5 = _h5(tmp_path, x, y)
    run = predict(bundle_dir, tmp_path / "p.csv", h5)
    table = run.table
    assert list(table.columns) == COLUMNS
    assert list(table["source"]) == [str(h5)] * N and list(table["index"]) == list(range(N))
    expected = predict_tiles(bundle, x)
    np.testing.assert_allclose(table["probability"], expected, rtol=0, atol=1e-6)
    assert list(table["label"]) == list((expected >= bundle.threshold).astype(int))
    assert 0 < table["label"].sum() < N  # the threshold splits them
    assert list(table["y_true"]) == list(y)
    assert table["error"].isna().all()
    assert f"{N} tiles predicted" in run.stdout


def test_h5_without_labels_and_float_course_copy(bundle, tmp_path):
    x, _ = _tiles()
    raw = x.astype(np.float32)
    raw[0, 0, 0, 0], raw[1, 5, 5, 1], raw[2, 9, 9, 2] = np.nan, np.inf, 300.0
    h5 = _h5(tmp_path, raw)
    result = predict_inputs(bundle, [h5])
    assert result.table["y_true"].isna().all()
    expected = predict_tiles(bundle, clean_tiles(raw))  # the pipeline's one cleaning of course copies
    np.testing.assert_allclose(result.table["probability"], expected, rtol=0, atol=1e-6)


def test_folder_of_png_and_tiff_tiles_and_single_images(bundle, tmp_path):
    x, _ = _tiles(4)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i, tile in enumerate(x[:3]):
        Image.fromarray(tile).save(folder / f"tile{i}.{'png' if i % 2 else 'tif'}")
    (folder / "notes.txt").write_text("not a tile")  # ignored: not an image extension
    single = tmp_path / "single.PNG"
    Image.fromarray(x[3]).save(single, format="PNG")
    result = predict_inputs(bundle, [folder, single])
    table = result.table
    assert list(table["source"]) == [
        str(folder / "tile0.tif"),
        str(folder / "tile1.png"),
        str(folder / "tile2.tif"),
        str(single),
    ]
    assert list(table["index"]) == [0, 0, 0, 0]
    np.testing.assert_allclose(table["probability"], predict_tiles(bundle, x), rtol=0, atol=1e-6)
    assert not result.failures


def test_tiles_that_are_not_96x96_rgb_are_refused_unless_resize(bundle_dir, bundle, tmp_path, predict):
    x, _ = _tiles(2)
    big = Image.fromarray(np.tile(x[0], (2, 2, 1)))  # 192 x 192 RGB
    big.save(tmp_path / "big.png")
    Image.fromarray(x[1]).convert("RGBA").save(tmp_path / "rgba.png")
    run = predict(bundle_dir, tmp_path / "p.csv", tmp_path / "big.png", tmp_path / "rgba.png")
    assert run.status == 2  # nothing could be predicted
    assert "big.png: tile is 192x192 RGB, expected 96x96 RGB (pass --resize" in run.stderr
    assert "rgba.png: tile is 96x96 RGBA" in run.stderr
    assert run.table["probability"].isna().all() and run.table["error"].str.contains("--resize").all()

    run = predict(
        bundle_dir, tmp_path / "r.csv", tmp_path / "big.png", tmp_path / "rgba.png", extra=["--resize"]
    )
    table = run.table
    resized = np.asarray(big.resize((96, 96), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(
        table["probability"], predict_tiles(bundle, np.stack([resized, x[1]])), atol=1e-6
    )


def test_unreadable_inputs_are_listed_and_the_rest_predicted(bundle_dir, tmp_path, predict):
    x, y = _tiles()
    h5 = _h5(tmp_path / "h5", x, y)
    Image.fromarray(x[0]).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "broken_x.h5").write_bytes(b"not hdf5")
    wrong = write_dataset(tmp_path / "wrong_x.h5", "x", np.zeros((2, 32, 32, 3), np.uint8))
    inputs = [
        tmp_path / "broken.png",
        h5,
        tmp_path / "missing.tif",
        tmp_path / "broken_x.h5",
        wrong,
        tmp_path / "good.png",
    ]
    run = predict(bundle_dir, tmp_path / "p.csv", *inputs)
    assert run.status == 1  # some inputs skipped, the CSV is complete for the rest
    table = run.table
    assert table["probability"].notna().sum() == N + 1
    errors = table.loc[table["error"].notna()]
    assert list(errors["source"]) == [str(p) for p in inputs[:1] + inputs[2:5]]  # in input order
    assert "unreadable image" in errors["error"].iloc[0]
    assert "no such file" in errors["error"].iloc[1]
    assert "not an HDF5 file" in errors["error"].iloc[2]
    assert "expected (N, 96, 96, 3)" in errors["error"].iloc[3]
    assert "4 inputs skipped" in run.stdout
    assert str(tmp_path / "missing.tif") in run.stderr


def test_table_columns_keep_their_types_across_failed_and_predicted_rows(bundle, tmp_path):
    x, y = _tiles(3)
    h5 = _h5(tmp_path, x, y)
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    table = predict_inputs(bundle, [tmp_path / "a.png", tmp_path / "missing.png", h5]).table
    assert table[["index", "label", "y_true"]].dtypes.eq("Int64").all()
    assert table["probability"].dtype == np.float64 and table["error"].dtype == object
    assert list(table["index"]) == [0, pd.NA, 0, 1, 2]
    assert list(table["y_true"]) == [pd.NA, pd.NA, *y]
    assert list(table["error"].isna()) == [True, False, True, True, True]
    failed = table.iloc[1]
    assert failed["source"] == str(tmp_path / "missing.png") and "no such file" in failed["error"]
    assert pd.isna(failed["probability"]) and pd.isna(failed["label"])


def test_inputs_are_counted_for_the_progress_bar_only_when_it_is_shown(bundle, tmp_path, monkeypatch):
    from pcamflow.deployment import predict

    x, y = _tiles(3)
    h5 = _h5(tmp_path, x, y)
    counted = []
    monkeypatch.setattr(predict, "tile_count", lambda path: counted.append(path) or 3)
    assert len(predict_inputs(bundle, [h5]).table) == 3
    assert counted == []  # no bar, no extra opening of every H5 file
    assert len(predict_inputs(bundle, [h5], progress=True).table) == 3
    assert counted == [h5]


def test_batch_size_changes_nothing_but_speed(bundle, tmp_path):
    x, y = _tiles()
    h5 = _h5(tmp_path, x, y)
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", h5, tmp_path / "a.png"]
    big = predict_inputs(bundle, inputs, batch_size=256).table
    small = predict_inputs(bundle, inputs, batch_size=3).table
    pd.testing.assert_frame_equal(big.drop(columns="probability"), small.drop(columns="probability"))
    np.testing.assert_allclose(big["probability"], small["probability"], rtol=0, atol=1e-6)


def test_tta_matches_training_side_tta_and_defaults_to_the_bundles_setting(tmp_path, predict):
    x, y = _tiles(6)
    h5 = _h5(tmp_path, x, y)
    model = tiny_model()
    expected = predict_proba(model, x, stats_of(synthetic_tiles("train", 256)[0]), tta=True)
    bundle_dir = make_bundle(tmp_path / "bundle", model=model)
    table = predict(bundle_dir, tmp_path / "tta.csv", h5, extra=["--tta"]).table
    np.testing.assert_allclose(table["probability"], expected, rtol=0, atol=1e-6)
    # a bundle whose threshold was chosen on TTA probabilities predicts with TTA unless told not to
    meta = (bundle_dir / META_FILE).read_text().replace('"model": "cnn"', '"model": "cnn", "tta": true')
    assert load_bundle(bundle_dir).metadata.get("tta") is None
    plain = predict_tiles(load_bundle(bundle_dir), x)
    _rewrite_with_manifest(bundle_dir, META_FILE, meta)
    table = predict(bundle_dir, tmp_path / "default.csv", h5).table
    np.testing.assert_allclose(table["probability"], expected, rtol=0, atol=1e-6)
    table = predict(bundle_dir, tmp_path / "no.csv", h5, extra=["--no-tta"]).table
    np.testing.assert_allclose(table["probability"], plain, rtol=0, atol=1e-6)


def _rewrite_with_manifest(bundle_dir: Path, name: str, text: str) -> None:
    import json

    from pcamflow.deployment.export import MANIFEST_FILE
    from pcamflow.io import sha256sum

    (bundle_dir / name).write_text(text)
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    manifest["files"][name] = sha256sum(bundle_dir / name)
    (bundle_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_tampered_bundle_fails_before_any_output(bundle_dir, tmp_path, predict):
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    (copy / META_FILE).write_text((copy / META_FILE).read_text().replace('"threshold": 0', '"threshold": 1'))
    x, y = _tiles()
    run = predict(copy, tmp_path / "p.csv", _h5(tmp_path, x, y))
    assert run.status == 2
    assert f"{copy / META_FILE}: sha256 differs" in run.stderr
    assert run.table is None  # no CSV written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_is_one_clear_line(bundle_dir, tmp_path, predict):
    x, y = _tiles()
    run = predict(bundle_dir, tmp_path / "p.csv", _h5(tmp_path, x, y), extra=["--device", "cuda"])
    assert run.status == 2
    assert "--device: cuda requested but no CUDA device is available here" in run.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_probabilities(bundle_dir, bundle, tmp_path):
    x, _ = _tiles()
    gpu = load_bundle(bundle_dir, "cuda")
    np.testing.assert_allclose(predict_tiles(gpu, x), predict_tiles(bundle, x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("problem", ["directory", "parent is a file", "no permission"])
def test_an_unwritable_out_fails_before_predicting(problem, bundle_dir, tmp_path, capsys, monkeypatch):
    from pcamflow import errors
    from pcamflow.cli import main
    from pcamflow.deployment import predict

    x, y = _tiles()
    h5 = _h5(tmp_path, x, y)
    out = {
        "directory": tmp_path,
        "parent is a file": h5 / "p.csv",
        "no permission": tmp_path / "sub" / "p.csv",
    }[problem]
    if problem == "no permission":  # chmod does not stop root, so the check's answer is faked
        monkeypatch.setattr(errors.os, "access", lambda path, mode: False)
    monkeypatch.setattr(predict, "predict_inputs", _must_not_run)
    assert main(["predict", "--model", str(bundle_dir), "--out", str(out), "--input", str(h5)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pcamflow: error: --out {out}:") and "\n" not in err
    assert not (tmp_path / "sub").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work ran although --out cannot be written")


def test_junk_tiles_are_flagged_and_a_0_1_float_input_is_named(bundle_dir, tmp_path, predict):
    """NaN/inf, black and white tiles carry a flag; a float H5 whose maximum is at most 1 gets a warning
    naming the likely scaling; a 16-bit grey PNG keeps its grey levels instead of becoming white."""
    x, y = _tiles()
    junk = x.astype(np.float32)
    junk[0] = np.nan
    junk[1, 0, 0, 0] = np.inf
    junk[2] = 0
    junk[3] = 255
    run = predict(bundle_dir, tmp_path / "p.csv", _h5(tmp_path, junk, y))
    flags = list(run.table["flag"].fillna(""))
    assert flags[:4] == ["has_nan", "has_inf", "black", "white"] and set(flags[4:]) == {""}

    scaled = tmp_path / "scaled"
    scaled.mkdir()
    run = predict(bundle_dir, tmp_path / "s.csv", _h5(scaled, x.astype(np.float32) / 255, y))
    assert "float tiles whose maximum is 0.9" in run.stderr and "probably scaled to [0, 1]" in run.stderr
    assert (run.table["flag"] == "black").all()

    grey = (np.linspace(0, 65535, 96 * 96).reshape(96, 96) * 0.5).astype(np.uint16)  # mid grey 16-bit
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    run = predict(bundle_dir, tmp_path / "g.csv", tmp_path / "grey16.png", extra=["--resize"])
    assert run.status == 0 and run.table["flag"].isna().all(), run.table


def test_out_that_is_one_of_the_inputs_is_refused(bundle_dir, tmp_path, capsys):
    x, y = _tiles()
    h5 = _h5(tmp_path, x, y)
    before = h5.read_bytes()
    from pcamflow.cli import main

    y_path = h5.parent / "camelyonpatch_level_2_split_test_y.h5"
    labels = y_path.read_bytes()
    for out in (h5, y_path):
        assert main(["predict", "--model", str(bundle_dir), "--out", str(out), "--input", str(h5)]) == 2
        assert f"--out {out}: is one of the inputs" in capsys.readouterr().err
    assert h5.read_bytes() == before and y_path.read_bytes() == labels


def test_a_folder_holding_a_pcam_split_uses_its_labels_without_skipping_them(bundle_dir, tmp_path, predict):
    x, y = _tiles()
    _h5(tmp_path / "split", x, y)
    run = predict(bundle_dir, tmp_path / "p.csv", tmp_path / "split")
    assert run.status == 0 and "inputs skipped" not in run.stdout + run.stderr
    assert len(run.table) == N and list(run.table["y_true"]) == list(y)
