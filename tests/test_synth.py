"""The embedded synthetic PCAM: PCAM's file format, the label rule, determinism, the poisoned copy."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import pcamflow
from sklearn.metrics import roc_auc_score

from pcamflow import constants
from pcamflow.data import synthesize as synth
from pcamflow.data.synth_tiles import BLOCK_TILES, generate_split
from pcamflow.data.synth_tissue import HI, LO
from pcamflow.errors import PcamflowError

SIZES = {"train": 300, "valid": 120, "test": 120}
SEED = 5
PCAM_META_COLUMNS = ["coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"]


def _write(directory, seed=SEED, poison=False, sizes=SIZES):
    return synth.write_synthetic(
        directory,
        n_train=sizes["train"],
        n_valid=sizes["valid"],
        n_test=sizes["test"],
        seed=seed,
        poison=poison,
    )


def _read(directory, split):
    with h5py.File(directory / constants.raw_filename(split, "x"), "r") as fx:
        x = fx[constants.X_KEY][:]
    with h5py.File(directory / constants.raw_filename(split, "y"), "r") as fy:
        y = fy[constants.Y_KEY][:]
    return x, y


def _clean(x):
    """What prepare does: NaN/inf -> 0, clip to [0, 255], uint8."""
    return np.clip(np.nan_to_num(x, nan=0, posinf=0, neginf=0), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clean")
    _write(directory)
    return directory


@pytest.fixture(scope="module")
def poisoned_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("poisoned")
    _write(directory, poison=True)
    return directory


@pytest.fixture(scope="module")
def blocks():
    """Rendered blocks with what they truly hold (tumour masks), from a larger train split."""
    return [block for _, block in generate_split(SEED, "train", 512)]


def test_files_have_pcam_layout(clean_dir):
    for split, n in SIZES.items():
        with h5py.File(clean_dir / constants.raw_filename(split, "x"), "r") as fx:
            assert list(fx) == [constants.X_KEY]
            assert fx[constants.X_KEY].shape == (n, *constants.TILE_SHAPE)
            assert fx[constants.X_KEY].dtype == np.uint8
        with h5py.File(clean_dir / constants.raw_filename(split, "y"), "r") as fy:
            assert list(fy) == [constants.Y_KEY]
            assert fy[constants.Y_KEY].shape == (n, *constants.Y_SHAPE)
            assert fy[constants.Y_KEY].dtype == np.uint8
        meta = pd.read_csv(clean_dir / constants.meta_filename(split))
        assert list(meta.columns) == [*PCAM_META_COLUMNS, "centre"]
        assert len(meta) == n


def test_same_seed_gives_identical_files_and_another_seed_does_not(clean_dir, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    _write(again)
    _write(other, seed=SEED + 1)
    for split in SIZES:
        x, y = _read(clean_dir, split)
        x_again, y_again = _read(again, split)
        assert x.tobytes() == x_again.tobytes() and y.tobytes() == y_again.tobytes()
        meta_file = constants.meta_filename(split)
        assert (clean_dir / meta_file).read_bytes() == (again / meta_file).read_bytes()
        assert not np.array_equal(x, _read(other, split)[0])


def test_worker_processes_render_the_same_tiles():
    n = BLOCK_TILES + 20  # two blocks
    serial = list(generate_split(SEED, "valid", n))
    parallel = list(generate_split(SEED, "valid", n, workers=2))
    assert [start for start, _ in parallel] == [start for start, _ in serial] == [0, BLOCK_TILES]
    for (_, a), (_, b) in zip(serial, parallel):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


def test_label_is_tumour_touching_the_centre_region(blocks, clean_dir):
    lo, hi = LO, HI
    assert (lo, hi - lo) == (32, constants.CENTRE)
    for block in blocks:
        assert np.array_equal(block.y, block.tumour[:, lo:hi, lo:hi].any(axis=(1, 2)))
        # the tumour mask is drawn content: its pixels are dark nuclei, not background
        grey = block.x.mean(axis=-1)
        assert grey[block.tumour].mean() < grey.mean() - 30
    tumour_anywhere = np.concatenate([b.tumour.any(axis=(1, 2)) for b in blocks])
    y = np.concatenate([b.y for b in blocks])
    assert tumour_anywhere[y == 1].all()
    # tumour outside the centre does not count: many negatives hold some
    assert tumour_anywhere[y == 0].mean() > 0.2
    for split in SIZES:
        meta = pd.read_csv(clean_dir / constants.meta_filename(split))
        _, y_file = _read(clean_dir, split)
        assert np.array_equal(meta["center_tumor_patch"].to_numpy(), y_file.ravel() == 1)
        assert not (meta["center_tumor_patch"] & ~meta["tumor_patch"]).any()


def test_classes_are_balanced(clean_dir):
    for split in SIZES:
        _, y = _read(clean_dir, split)
        assert set(np.unique(y)) == {0, 1}
        assert 0.45 <= y.mean() <= 0.55


def test_centre_darkness_does_not_give_the_label_away(blocks):
    """Negatives carry as much nuclear material in the centre as positives (an MLP cannot just
    count dark pixels): the centre's mean darkness alone separates the classes only weakly."""
    x = np.concatenate([b.x for b in blocks]).astype(np.float32)
    y = np.concatenate([b.y for b in blocks])
    darkness = -x[:, LO:HI, LO:HI].mean(axis=(1, 2, 3))
    assert roc_auc_score(y, darkness) < 0.75


def test_two_scanning_centres_stain_differently(clean_dir, blocks):
    x = np.concatenate([b.x for b in blocks]).astype(np.float32)
    centre = np.concatenate([b.centre for b in blocks])
    tissue = x.mean(axis=(1, 2, 3)) < 200
    colour = [x[(centre == c) & tissue].mean(axis=(0, 1, 2)) for c in (0, 1)]
    assert np.abs(colour[0] - colour[1]).max() > 3  # grey levels, mean over ~200 tiles each
    meta = pd.read_csv(clean_dir / constants.meta_filename("train"))
    assert set(meta["centre"]) == {0, 1}
    # a slide is scanned at one centre
    assert (meta.groupby("wsi")["centre"].nunique() == 1).all()


def test_clean_data_has_no_faults(clean_dir):
    record = json.loads((clean_dir / constants.PLANTED_FILE).read_text())
    assert record["poison"] is False and record["seed"] == SEED
    assert record["cross_split_duplicates"] == [] and record["within_split_duplicates"] == []
    assert all(tiles == [] for split in record["splits"].values() for tiles in split.values())
    assert all(tiles == [] for tiles in record["dark"].values())
    hashes = []
    for split in SIZES:
        x, _ = _read(clean_dir, split)
        flat = x.reshape(len(x), -1)
        assert (flat.max(axis=1) > 10).all() and (flat.min(axis=1) < 245).all()  # no black/white
        hashes += [hashlib.sha1(tile.tobytes()).hexdigest() for tile in x]
    assert len(set(hashes)) == len(hashes)  # no duplicates within or across splits


def test_poisoned_copy_holds_exactly_what_it_records(poisoned_dir, clean_dir):
    record = json.loads((poisoned_dir / constants.PLANTED_FILE).read_text())
    assert record["poison"] is True and record["seed"] == SEED
    for split, n in SIZES.items():
        x, y = _read(poisoned_dir, split)
        assert x.dtype == np.float32 and x.shape == (n, *constants.TILE_SHAPE)
        planted = record["splits"][split]
        assert set(planted) == set(constants.FAULTS)
        faulty = [i for tiles in planted.values() for i in tiles]
        assert len(faulty) == len(set(faulty))  # one fault per tile
        assert all(tiles for tiles in planted.values())  # every fault is planted
        assert 0.01 <= len(faulty) / n <= 0.06
        for i in planted["nan"]:
            assert np.isnan(x[i]).any()
        for i in planted["inf"]:
            assert np.isinf(x[i]).any() and not np.isnan(x[i]).any()
        for i in planted["out_of_range"]:
            assert np.isfinite(x[i]).all() and x[i].max() > 300 and x[i].min() < 0
        for i in planted["black"]:
            assert (x[i] == 0).all()
        for i in planted["white"]:
            assert (x[i] == 255).all()
        clean_x, clean_y = _read(clean_dir, split)
        # dark tiles: the clean tile under-exposed into the slices' dark bin, never black
        dark = record["dark"][split]
        assert len(dark) >= 0.03 * n and not set(dark) & set(faulty)
        for i in dark:
            assert 0.1 < x[i].mean() / 255 < 0.35 and x[i].max() > 10
            assert np.corrcoef(x[i].ravel(), clean_x[i].ravel().astype(np.float32))[0, 1] > 0.999
        # copies of another tile of the same split: exact, labels and all, on tiles without a fault
        within = [d for d in record["within_split_duplicates"] if d["split"] == split]
        assert within and all(d["copy_of"] < d["index"] for d in within)
        for d in within:
            assert np.array_equal(x[d["index"]], x[d["copy_of"]]) and y[d["index"]] == y[d["copy_of"]]
        copies = [d["index"] for d in within]
        assert not set(copies + [d["copy_of"] for d in within]) & set(faulty + dark)
        # every other tile is a clean tile, equal to the clean data of the same seed
        copied = [d["index_a"] for d in record["cross_split_duplicates"]] if split == "train" else []
        others = np.setdiff1d(np.arange(n), faulty + dark + copies + copied)
        assert np.array_equal(x[others], clean_x[others].astype(np.float32))
        copied += copies
        assert np.array_equal(np.delete(y, copied), np.delete(clean_y, copied))  # faults keep labels


def test_planted_duplicates_are_exact_after_cleaning(poisoned_dir):
    record = json.loads((poisoned_dir / constants.PLANTED_FILE).read_text())
    duplicates = record["cross_split_duplicates"]
    assert 1 <= len(duplicates) <= 10
    faulty = {s: {i for tiles in record["splits"][s].values() for i in tiles} for s in SIZES}
    data = {split: _read(poisoned_dir, split) for split in ("train", "test")}
    meta = {split: pd.read_csv(poisoned_dir / constants.meta_filename(split)) for split in ("train", "test")}
    for d in duplicates:
        assert (d["split_a"], d["split_b"]) == ("train", "test")
        a, b = d["index_a"], d["index_b"]
        assert a not in faulty["train"] and b not in faulty["test"]
        assert np.array_equal(_clean(data["train"][0][a]), _clean(data["test"][0][b]))
        assert data["train"][1][a] == data["test"][1][b]
        assert meta["train"].iloc[a].equals(meta["test"].iloc[b])


def test_bad_sizes_are_refused_with_the_key(tmp_path):
    with pytest.raises(PcamflowError, match="synthetic.n_valid"):
        synth.write_synthetic(tmp_path, n_train=10, n_valid=0, n_test=10, seed=0, poison=False)
    assert not list(tmp_path.iterdir())


def test_command_line_bad_seed_exits_2_with_one_line_naming_the_key(tmp_path):
    proc = pcamflow("synth", "--out", str(tmp_path / "synth"), "--seed", "-1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("pcamflow: error: ") and "synthetic.seed" in proc.stderr
    assert not (tmp_path / "synth").exists()


def test_command_line_writes_the_dataset(tmp_path):
    out = tmp_path / "synth"
    pcamflow("synth", "--out", str(out), "--n-train", "12", "--n-valid", "6", "--n-test", "6", "--poison")
    expected = {constants.raw_filename(s, k) for s in constants.SPLITS for k in ("x", "y")}
    expected |= {constants.meta_filename(s) for s in constants.SPLITS} | {constants.PLANTED_FILE}
    assert {p.name for p in out.iterdir()} == expected
    assert json.loads((out / constants.PLANTED_FILE).read_text())["poison"] is True


def test_command_line_refuses_to_overwrite_pcam_files_unless_asked(tmp_path):
    out = tmp_path / "course"
    out.mkdir()
    x_file = out / constants.raw_filename("train", "x")
    x_file.write_bytes(b"a course copy")
    small = ["--n-train", "6", "--n-valid", "4", "--n-test", "4"]
    proc = pcamflow("synth", "--out", str(out), *small, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"pcamflow: error: {out}: already holds")
    assert "--overwrite" in proc.stderr and proc.stderr.count("\n") == 1
    assert x_file.read_bytes() == b"a course copy"
    pcamflow("synth", "--out", str(out), *small, "--overwrite")
    assert x_file.read_bytes() != b"a course copy"
