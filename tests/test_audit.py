"""The audit: faults found with their indices, sizes explained, duplicates within and across splits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import xxhash
from conftest import pcamflow
from pcam_fixtures import alternating_labels, random_tiles, write_split

from pcamflow.data import audit as audit_module
from pcamflow.data.audit import (
    FAULTS,
    HASH_DTYPE,
    audit_split,
    cross_split_duplicates,
    load_hashes,
    save_hashes,
    tile_hash,
)
from pcamflow.data.download import record_path
from pcamflow.data.rawdata import split_paths
from pcamflow.data.synthesize import write_synthetic
from pcamflow.errors import PcamflowError

THRESHOLDS = {"black_max": 10, "white_min": 245}

# where the hand-built float32 split below holds each fault
PLANTED = {"nan": [3], "inf": [4, 17], "out_of_range": [5, 11], "black": [6], "white": [7]}
DUPLICATE_PAIR = [8, 9]


def faulty_split(tmp_path, dtype=np.float32):
    """20 float tiles with faults at PLANTED and one duplicate pair; returns (x, y) paths and tiles."""
    x = random_tiles(20, seed=1, dtype=dtype)
    x[3, 0, 0, 0] = np.nan
    x[4, 1, 1, 1] = np.inf
    x[17, 2, 2, 2] = -np.inf
    x[5, 10, 10, 0] = 7000.0
    x[11, 5, 5, 2] = -40.0
    x[6] = 0.0
    x[7] = 255.0
    x[9] = x[8]
    y = np.array([1, 1, 1] + [0] * 17, np.uint8)
    return (*write_split(tmp_path, "train", x, y), x)


def audit(x_path, y_path, block_size=7, **kw):
    return audit_split(x_path, y_path, block_size=block_size, **THRESHOLDS, **kw)


def test_audit_finds_each_fault_with_its_indices(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    report = audit(x_path, y_path).report
    assert {f: report["faults"][f]["indices"] for f in FAULTS} == PLANTED
    assert {f: report["faults"][f]["tiles"] for f in FAULTS} == {f: len(i) for f, i in PLANTED.items()}
    assert report["faults"]["out_of_range"]["values"] == 2
    assert report["value_range"] == {"min": -40.0, "max": 7000.0, "of": "finite raw values"}
    assert report["duplicates"]["groups"] == [DUPLICATE_PAIR]


def test_audit_reports_dtype_size_and_the_reason_for_it(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    report = audit(x_path, y_path).report
    assert report["dtype"] == {"x": "float32", "y": "uint8"}
    assert report["itemsize"] == 4
    assert report["shapes"] == {"x": [20, 96, 96, 3], "y": [20, 1, 1, 1]}
    assert report["size"]["x_bytes"] == x_path.stat().st_size
    assert report["size"]["uint8_bytes"] == 20 * 96 * 96 * 3
    assert report["size"]["ratio_to_uint8"] == pytest.approx(4.0, rel=0.01)
    assert "4x the uint8 size" in report["size"]["reason"]


def test_audit_reports_files_checksums_class_balance_and_meta(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    report = audit(x_path, y_path).report
    assert report["files"]["xxh128"]["x"] == xxhash.xxh3_128_hexdigest(x_path.read_bytes())
    assert report["files"]["xxh128"]["y"] == xxhash.xxh3_128_hexdigest(y_path.read_bytes())
    assert report["class_balance"] == {"0": 17, "1": 3, "positive_fraction": 0.15}
    assert report["files"]["meta"]["found"] is False
    (tmp_path / "camelyonpatch_level_2_split_train_meta.csv").write_text("coord_y,coord_x\n")
    assert audit(x_path, y_path).report["files"]["meta"]["found"] is True


def uint8_split(tmp_path):
    """20 uint8 tiles: black at 6, white at 7, one duplicate pair; returns (x, y) paths."""
    x = random_tiles(20, seed=1)
    x[6], x[7], x[9] = 0, 255, x[8]
    return write_split(tmp_path, "train", x, np.array([1, 1, 1] + [0] * 17, np.uint8))


@pytest.mark.parametrize("split", [faulty_split, uint8_split])
def test_audit_does_not_depend_on_the_block_size_or_the_thread_count(tmp_path, split):
    x_path, y_path = split(tmp_path)[:2]
    whole = audit(x_path, y_path, block_size=1000, threads=1)
    assert whole.report["duplicates"]["groups"] == [DUPLICATE_PAIR]
    assert whole.report["faults"]["black"]["indices"] == [6] and whole.report["faults"]["white"][
        "indices"
    ] == [7]
    for block_size, threads in ((3, 1), (3, 2), (7, 3), (1000, 2)):
        other = audit(x_path, y_path, block_size=block_size, threads=threads)
        np.testing.assert_array_equal(other.hashes, whole.hashes)
        assert {**other.report, "block_size": 0} == {**whole.report, "block_size": 0}


def test_clean_uint8_split_has_no_faults(tmp_path):
    x_path, y_path = write_split(tmp_path, "valid", random_tiles(9), alternating_labels(9))
    report = audit(x_path, y_path).report
    assert report["split"] == "valid"
    assert all(report["faults"][f]["tiles"] == 0 for f in FAULTS)
    assert report["itemsize"] == 1 and report["dtype"]["x"] == "uint8"
    assert report["duplicates"]["n_groups"] == 0


def test_hash_is_of_the_cleaned_tile(tmp_path):
    tile = random_tiles(1)[0]
    noisy = tile.astype(np.float32) + 0.3  # rounds back to the same uint8 tile
    x_path, y_path = write_split(
        tmp_path, "test", np.stack([noisy, tile.astype(np.float32)]), np.array([0, 1])
    )
    hashes = audit(x_path, y_path).hashes
    stored = np.array([tile_hash(tile)], dtype=HASH_DTYPE)[0]  # as stored: numpy drops trailing NULs
    assert hashes[0] == hashes[1] == stored
    assert tile_hash(tile) != tile_hash(random_tiles(1, seed=5)[0])
    assert tile_hash(tile) == xxhash.xxh3_128_digest(tile.tobytes())


@pytest.mark.parametrize(("dtype", "algorithm"), [("S16", "blake2b"), ("S32", "sha256")])
def test_hash_files_of_an_older_pcamflow_are_refused_not_compared(tmp_path, dtype, algorithm):
    old = tmp_path / "train_hashes.npy"
    np.save(old, np.array([b"0123456789abcdef"], dtype=dtype))
    with pytest.raises(
        PcamflowError, match=rf"train_hashes\.npy: tile hashes of an older pcamflow \({algorithm}\).*rerun"
    ):
        load_hashes(old)


def test_hash_files_keep_every_hash_and_name_their_algorithm(tmp_path):
    hashes = np.array([tile_hash(tile) for tile in random_tiles(50)], dtype=HASH_DTYPE)
    save_hashes(tmp_path / "h.npy", hashes)
    assert np.load(tmp_path / "h.npy").dtype.names == ("xxh3_128",)
    np.testing.assert_array_equal(load_hashes(tmp_path / "h.npy"), hashes)


def test_a_checksum_failure_reaches_the_caller(tmp_path, monkeypatch):
    x_path, y_path, _ = faulty_split(tmp_path)

    def unreadable(path):
        raise PcamflowError(f"{path}: cannot read")

    monkeypatch.setattr(audit_module, "file_digest", lambda path, algorithm: unreadable(path))
    with pytest.raises(PcamflowError, match="train_x.h5: cannot read"):
        audit(x_path, y_path)


def test_cross_split_duplicates_pairs_indices_and_skips_blank_tiles(tmp_path):
    train, test = random_tiles(6, seed=1), random_tiles(4, seed=2)
    train[4] = test[1]  # leak
    train[0] = test[3] = 0  # black in both: not a leak worth reporting
    results = {}
    for split, x in (("train", train), ("test", test)):
        results[split] = audit(*write_split(tmp_path, split, x, alternating_labels(len(x))))
    cross = cross_split_duplicates(
        {s: r.hashes for s, r in results.items()}, {s: r.report for s, r in results.items()}
    )
    assert cross["pairs"] == [{"split_a": "train", "index_a": 4, "split_b": "test", "index_b": 1}]
    assert cross["counts"] == {"train-test": 1}
    assert cross["train_indices_in_valid_or_test"] == [4]


def test_cli_writes_json_plot_and_hashes(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    out = tmp_path / "out"
    proc = pcamflow(
        "audit",
        *("--x", str(x_path), "--y", str(y_path), "--out", str(out / "train.json")),
        *("--plot", str(out / "train.png"), "--hashes", str(out / "train.npy"), "--block-size", "4"),
    )
    report = json.loads((out / "train.json").read_text())
    assert report["faults"]["nan"]["indices"] == PLANTED["nan"]
    assert report["block_size"] == 4 and report["thresholds"] == THRESHOLDS  # schema defaults
    assert (out / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(load_hashes(out / "train.npy")) == 20
    assert "nan 1" in proc.stdout


@pytest.mark.parametrize(
    ("option", "value", "key"),
    [("--white-min", "-1", "audit.white_min"), ("--block-size", "0", "audit.block_size")],
)
def test_cli_bad_option_exits_2_with_one_line_naming_the_key(tmp_path, option, value, key):
    x_path, y_path, _ = faulty_split(tmp_path)
    out = tmp_path / "out" / "train.json"
    proc = pcamflow(
        "audit", "--x", str(x_path), "--y", str(y_path), "--out", str(out), option, value, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("pcamflow: error: ") and key in proc.stderr
    assert not out.parent.exists()


def test_audit_finds_every_fault_the_generator_planted(tmp_path):
    record = write_synthetic(tmp_path, n_train=200, n_valid=100, n_test=100, seed=3, poison=True)
    results = {
        split: audit(*split_paths(tmp_path, split), block_size=100, split=split) for split in record["splits"]
    }
    for split, planted in record["splits"].items():
        report = results[split].report
        assert report["dtype"]["x"] == "float32"
        for fault in ("nan", "inf", "out_of_range"):  # cannot occur by chance in the generator's data
            assert report["faults"][fault]["indices"] == planted[fault], (split, fault)
        for fault in ("black", "white"):  # a real tile might also be blank; every planted one is found
            assert set(planted[fault]) <= set(report["faults"][fault]["indices"]), (split, fault)
    cross = cross_split_duplicates(
        {s: r.hashes for s, r in results.items()}, {s: r.report for s, r in results.items()}
    )
    planted_pairs = sorted(record["cross_split_duplicates"], key=lambda p: (p["index_a"], p["index_b"]))
    assert planted_pairs and cross["pairs"] == planted_pairs
    for split in record["splits"]:  # every planted copy within a split, and nothing else
        planted = {
            (d["copy_of"], d["index"]) for d in record["within_split_duplicates"] if d["split"] == split
        }
        assert planted and {tuple(g) for g in results[split].report["duplicates"]["groups"]} == planted


def test_audit_says_whether_each_file_traces_back_to_a_published_md5(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    # x as pcamflow's download leaves it: a record beside it, its .gz checked against Zenodo's md5
    record = {
        "url": "https://example.org/x.h5.gz",
        "gz_md5": "a" * 32,
        "gz_md5_published": True,
        "h5_xxh128": xxhash.xxh3_128_hexdigest(x_path.read_bytes()),
    }
    record_path(x_path).write_text(json.dumps(record))
    provenance = audit(x_path, y_path).report["files"]["provenance"]
    assert provenance["x"]["matches_published"] is True
    assert provenance["y"]["matches_published"] is None  # no record: a copy from elsewhere
    assert "no download record" in provenance["y"]["how"]
    record["h5_xxh128"] = "0" * 32  # the file changed since
    record_path(x_path).write_text(json.dumps(record))
    provenance = audit(x_path, y_path).report["files"]["provenance"]
    assert provenance["x"]["matches_published"] is False
    assert "changed since it was downloaded (xxh128 then 000" in provenance["x"]["how"]


def test_a_download_record_of_an_older_pcamflow_is_checked_by_its_md5(tmp_path):
    x_path, y_path, _ = faulty_split(tmp_path)
    record = {"url": "u", "gz_md5": "a" * 32, "gz_md5_published": True}
    for h5_md5, traces in ((hashlib.md5(x_path.read_bytes()).hexdigest(), True), ("0" * 32, False)):
        record_path(x_path).write_text(json.dumps({**record, "h5_md5": h5_md5}))  # no h5_xxh128
        provenance = audit(x_path, y_path).report["files"]["provenance"]["x"]
        assert provenance["matches_published"] is traces
    assert "md5 then 000" in provenance["how"]
