"""Prepare: the clean uint8 store, what it drops and why, train-only statistics, nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os

import numpy as np
import pytest
from conftest import pcamflow
from pcam_fixtures import alternating_labels, random_tiles, write_dataset, write_split

from pcamflow import constants
from pcamflow import io as io_module
from pcamflow.data.audit import audit_split, cross_split_duplicates
from pcamflow.data.prepare import prepare_store
from pcamflow.data.rawdata import clean_tiles, split_paths
from pcamflow.data.store import MANIFEST_FILE, load_split, load_stats, store_checksum, store_files
from pcamflow.errors import PcamflowError
from pcamflow.io import read_json

DEFAULTS = {"drop_black_white_from": ["train"], "drop_cross_split_duplicates": True}
SIZES = {"train": 12, "valid": 6, "test": 5}


def raw_data(tmp_path):
    """float32 splits: train has NaN (0), out-of-range (1), black (2), white (3), a test tile (4);
    valid has a black (0) and a white (1) tile, which must stay."""
    data = {
        s: [random_tiles(n, seed=i, dtype=np.float32), alternating_labels(n)]
        for i, (s, n) in enumerate(SIZES.items())
    }
    train, valid, test = data["train"][0], data["valid"][0], data["test"][0]
    train[0, 3, 3, 0], train[1, 4, 4, 1] = np.nan, 999.0
    train[2], train[3], train[4] = 0.0, 255.0, test[1]
    valid[0], valid[1] = 0.0, 255.0
    raw_dir = tmp_path / "raw"
    for split, (x, y) in data.items():
        write_split(raw_dir, split, x, y)
    return raw_dir, data


def run_prepare(raw_dir, out, block_size=5, **settings):
    raw = {s: split_paths(raw_dir, s) for s in constants.SPLITS}
    results = {
        s: audit_split(*raw[s], split=s, block_size=block_size, black_max=10, white_min=245) for s in raw
    }
    audits = {s: r.report for s, r in results.items()}
    cross = cross_split_duplicates({s: r.hashes for s, r in results.items()}, audits)
    return prepare_store(raw, out, audits=audits, cross=cross, block_size=block_size, **(DEFAULTS | settings))


def test_store_holds_cleaned_kept_tiles_their_labels_and_raw_rows(tmp_path):
    raw_dir, data = raw_data(tmp_path)
    run_prepare(raw_dir, tmp_path / "store")
    train = load_split(tmp_path / "store", "train")
    kept = [0, 1, 5, 6, 7, 8, 9, 10, 11]  # black 2, white 3 and the test copy 4 dropped
    assert train.index.tolist() == kept and train.index.dtype == np.int64
    assert train.x.dtype == np.uint8 and train.y.dtype == np.uint8
    np.testing.assert_array_equal(train.x, clean_tiles(data["train"][0])[kept])
    np.testing.assert_array_equal(train.y, data["train"][1][kept])


def test_valid_and_test_keep_every_tile_and_label(tmp_path):
    raw_dir, data = raw_data(tmp_path)
    run_prepare(raw_dir, tmp_path / "store")
    for split in ("valid", "test"):
        stored = load_split(tmp_path / "store", split)
        assert stored.index.tolist() == list(range(SIZES[split]))
        np.testing.assert_array_equal(stored.x, clean_tiles(data[split][0]))
        np.testing.assert_array_equal(stored.y, data[split][1])


def test_counts_say_what_was_dropped_and_why(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    counts = run_prepare(raw_dir, tmp_path / "store")["counts"]
    assert counts["train"] == {
        "raw": 12,
        "kept": 9,
        "dropped": {"black": 1, "white": 1, "cross_split_duplicate": 1, "within_split_duplicate": 0},
        "dropped_total": 3,
    }
    assert counts["valid"]["kept"] == 6 and counts["valid"]["dropped_total"] == 0


def test_what_is_dropped_follows_the_config(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    run_prepare(
        raw_dir, tmp_path / "a", drop_black_white_from=["train", "valid"], drop_cross_split_duplicates=False
    )
    assert load_split(tmp_path / "a", "train").index.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
    assert load_split(tmp_path / "a", "valid").index.tolist() == [2, 3, 4, 5]
    run_prepare(raw_dir, tmp_path / "b", drop_black_white_from=[])
    assert load_split(tmp_path / "b", "train").index.tolist() == [i for i in range(12) if i != 4]


def test_repeated_copies_within_a_split_are_dropped_but_the_first_where_configured(tmp_path):
    raw_dir, data = raw_data(tmp_path)
    train, valid = data["train"][0], data["valid"][0]
    train[7], train[9], valid[3] = train[5], train[5], valid[2]  # train: 5, 7, 9 one tile; valid: 2, 3
    for split in ("train", "valid"):
        write_split(raw_dir, split, *data[split])
    stats = run_prepare(raw_dir, tmp_path / "a", drop_duplicates_from=["train"])
    assert load_split(tmp_path / "a", "train").index.tolist() == [0, 1, 5, 6, 8, 10, 11]
    assert load_split(tmp_path / "a", "valid").index.tolist() == list(range(SIZES["valid"]))
    assert stats["counts"]["train"]["dropped"]["within_split_duplicate"] == 2
    assert stats["settings"]["drop_duplicates_from"] == ["train"]
    run_prepare(raw_dir, tmp_path / "b", drop_duplicates_from=["train", "valid"])
    assert 3 not in load_split(tmp_path / "b", "valid").index.tolist()
    run_prepare(raw_dir, tmp_path / "c", drop_duplicates_from=[])
    assert {7, 9} <= set(load_split(tmp_path / "c", "train").index.tolist())


def test_stats_are_the_channel_mean_and_std_of_kept_train_tiles(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    run_prepare(raw_dir, tmp_path / "store")
    stats = load_stats(tmp_path / "store")
    pixels = load_split(tmp_path / "store", "train").x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    "settings",
    [
        {"drop_black_white_from": []},  # nothing but the leaked tile dropped
        {"drop_black_white_from": [], "drop_cross_split_duplicates": False},  # nothing dropped
        {"drop_black_white_from": ["train", "valid"], "drop_cross_split_duplicates": False},
    ],
)
def test_stats_count_exactly_the_kept_train_tiles_whatever_is_dropped(tmp_path, settings):
    raw_dir, _ = raw_data(tmp_path)
    stats = run_prepare(raw_dir, tmp_path / "store", block_size=2, **settings)
    tiles = load_split(tmp_path / "store", "train").x
    pixels = tiles.reshape(-1, 3) / 255.0
    assert stats["pixels_per_channel"] == len(tiles) * 96 * 96
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=1e-12)


def test_manifest_holds_sha256_of_every_file_and_one_checksum(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    out = tmp_path / "store"
    run_prepare(raw_dir, out)
    assert sorted(out.iterdir()) == sorted(store_files(out, constants.SPLITS))
    manifest = read_json(out / MANIFEST_FILE)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert len(manifest["files"]) == len(store_files(out, constants.SPLITS)) - 1
    assert store_checksum(out) == manifest["checksum"]


def test_store_does_not_depend_on_the_block_size(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    run_prepare(raw_dir, tmp_path / "a", block_size=1)
    run_prepare(raw_dir, tmp_path / "b", block_size=100)
    assert store_checksum(tmp_path / "a") == store_checksum(tmp_path / "b")


def test_a_failure_midway_leaves_no_store_and_no_temporary_files(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    raw = {s: split_paths(raw_dir, s) for s in constants.SPLITS}
    results = {s: audit_split(*raw[s], split=s, block_size=5, black_max=10, white_min=245) for s in raw}
    audits = {s: r.report for s, r in results.items()}
    cross = cross_split_duplicates({s: r.hashes for s, r in results.items()}, audits)
    os.truncate(
        raw["test"][0], raw["test"][0].stat().st_size // 2
    )  # breaks after train and valid are written
    before = set(tmp_path.iterdir())
    with pytest.raises(PcamflowError, match="truncated"):
        prepare_store(raw, tmp_path / "store", audits=audits, cross=cross, block_size=5, **DEFAULTS)
    assert set(tmp_path.iterdir()) == before


def test_without_a_train_split_nothing_is_written(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    raw = {s: split_paths(raw_dir, s) for s in ("valid", "test")}
    audits = {s: audit_split(*raw[s], block_size=5, black_max=10, white_min=245).report for s in raw}
    before = set(tmp_path.iterdir())
    with pytest.raises(
        PcamflowError, match="no train split given; the channel statistics come from train only"
    ):
        prepare_store(raw, tmp_path / "store", audits=audits, cross={"pairs": []}, block_size=5, **DEFAULTS)
    assert set(tmp_path.iterdir()) == before


def test_an_audit_of_other_files_is_refused(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    raw = {s: split_paths(raw_dir, s) for s in constants.SPLITS}
    audits = {s: audit_split(*raw[s], block_size=5, black_max=10, white_min=245).report for s in raw}
    write_split(raw_dir, "valid", random_tiles(7, dtype=np.float32), alternating_labels(7))
    cross = {"pairs": []}
    with pytest.raises(PcamflowError, match="holds 7 tiles but its audit counts 6; rerun the audit"):
        prepare_store(raw, tmp_path / "store", audits=audits, cross=cross, block_size=5, **DEFAULTS)
    assert not (tmp_path / "store").exists()


def test_an_audit_of_a_file_with_the_same_tile_count_is_refused(tmp_path):
    raw_dir, data = raw_data(tmp_path)
    raw = {s: split_paths(raw_dir, s) for s in constants.SPLITS}
    audits = {s: audit_split(*raw[s], block_size=5, black_max=10, white_min=245).report for s in raw}
    write_split(raw_dir, "valid", data["valid"][0].astype(np.uint8), data["valid"][1])  # 6 tiles again
    with pytest.raises(
        PcamflowError, match="is stored as uint8 but its audit records float32; rerun the audit"
    ):
        prepare_store(raw, tmp_path / "store", audits=audits, cross={"pairs": []}, block_size=5, **DEFAULTS)
    assert not (tmp_path / "store").exists()


def test_cli_refuses_an_audit_dir_of_other_files_naming_both(tmp_path):
    raw_dir, data = raw_data(tmp_path)
    audit_dir = tmp_path / "audit"
    for split in constants.SPLITS:
        x_path, y_path = split_paths(raw_dir, split)
        pcamflow(
            "audit",
            "--x",
            str(x_path),
            "--y",
            str(y_path),
            "--out",
            str(audit_dir / constants.AUDIT_FILE.format(split=split)),
        )
    (audit_dir / constants.CROSS_SPLIT_FILE).write_text('{"pairs": []}')
    args = ("prepare", "--raw-dir", str(raw_dir), "--audit-dir", str(audit_dir))
    pcamflow(*args, "--out", str(tmp_path / "fits"))  # the audits of these very files are used
    assert load_split(tmp_path / "fits", "train").index.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
    # same tile count and dtype, another file: chunked storage changes its size on disk
    x_path = raw_dir / constants.raw_filename("test", "x")
    write_dataset(x_path, constants.X_KEY, data["test"][0], chunks=(1, 96, 96, 3))
    out = tmp_path / "store"
    proc = pcamflow(*args, "--out", str(out), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert str(x_path) in proc.stderr and str(audit_dir / "test.json") in proc.stderr
    assert "bytes but its audit records" in proc.stderr
    assert not out.exists()


def test_dropping_every_train_tile_is_an_error(tmp_path):
    raw_dir = tmp_path / "raw"
    for split in constants.SPLITS:
        write_split(raw_dir, split, np.zeros((3, 96, 96, 3), np.uint8), alternating_labels(3))
    with pytest.raises(PcamflowError, match="every tile of split 'train' would be dropped"):
        run_prepare(raw_dir, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_cli_prepares_a_store_computing_the_audits_itself(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    out = tmp_path / "store"
    proc = pcamflow(
        "prepare",
        "--raw-dir",
        str(raw_dir),
        "--out",
        str(out),
        "--block-size",
        "4",
        "--keep-cross-split-duplicates",
    )
    assert load_split(out, "train").index.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
    assert "train 10/12" in proc.stdout


def test_cli_refuses_to_replace_a_store_unless_told_to(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    out = tmp_path / "store"
    prepare = ("prepare", "--raw-dir", str(raw_dir), "--out", str(out))
    pcamflow(*prepare)
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    # other settings: a replaced store would differ, and runs trained on this one would be refused
    proc = pcamflow(*prepare, "--keep-cross-split-duplicates", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"pcamflow: error: {out}: already holds ")
    assert "pcamflow prepare --overwrite replaces them" in proc.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == written
    pcamflow(*prepare, "--keep-cross-split-duplicates", "--overwrite")
    assert load_split(out, "train").index.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 10, 11]
    assert {path.name: path.read_bytes() for path in out.iterdir()} != written


def test_cli_bad_input_is_one_line_and_leaves_no_store(tmp_path):
    raw_dir, _ = raw_data(tmp_path)
    missing = split_paths(raw_dir, "test")[1]
    missing.unlink()
    proc = pcamflow("prepare", "--raw-dir", str(raw_dir), "--out", str(tmp_path / "store"), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"pcamflow: error: {missing}: no such file"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    ("option", "value", "key"),
    [
        ("--drop-black-white-from", "trian", "prepare.drop_black_white_from"),
        ("--block-size", "0", "audit.block_size"),
    ],
)
def test_cli_bad_option_exits_2_with_one_line_naming_the_key(tmp_path, option, value, key):
    raw_dir, _ = raw_data(tmp_path)
    proc = pcamflow(
        "prepare", "--raw-dir", str(raw_dir), "--out", str(tmp_path / "store"), option, value, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("pcamflow: error: ") and key in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.fixture
def small_buffers(monkeypatch):
    """StreamWriter with 8 KB buffers: a few KB of data cross several of them."""
    monkeypatch.setattr(io_module.StreamWriter, "BUFFER", 8192)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 8192, 3 * 8192 + 5])
def test_stream_writer_writes_and_hashes_every_byte_in_order(tmp_path, small_buffers, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    writer = io_module.StreamWriter(tmp_path / "f", "sha256")
    for start in range(0, size, 3000):  # pieces that straddle the buffers
        writer.write(data[start : start + 3000])
    writer.write(b"")
    assert writer.finish() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f").read_bytes() == data  # the last buffer's padding cut off


def test_stream_writer_writes_plainly_where_direct_io_is_refused(tmp_path, small_buffers, monkeypatch):
    """Where O_DIRECT is refused at open (a file system without it) or by a write (an alignment it
    wants bigger), the file is written all the same."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        pytest.skip("no O_DIRECT on this system")
    real_open, real_write = os.open, os.write
    refused = {"open": 0, "write": 0}

    def open_without_direct(path, flags, *args):
        if flags & direct and refused["open"] == 0:
            refused["open"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def first_direct_write_refused(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct and refused["write"] == 0:
            refused["write"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    data = bytes(range(256)) * 100
    monkeypatch.setattr(io_module.os, "open", open_without_direct)
    monkeypatch.setattr(io_module.os, "write", first_direct_write_refused)
    for name in ("refused at open", "refused by a write"):
        writer = io_module.StreamWriter(tmp_path / name, "xxh128")
        writer.write(data)
        digest = io_module.new_digest("xxh128")
        digest.update(data)
        assert writer.finish() == digest.hexdigest()
        assert (tmp_path / name).read_bytes() == data
    assert refused["open"] == 1
    probe = tmp_path / "probe"
    with contextlib.suppress(OSError):  # where this file system takes O_DIRECT, a write was refused too
        os.close(real_open(probe, os.O_WRONLY | os.O_CREAT | direct))
        assert refused["write"] == 1
