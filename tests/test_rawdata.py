"""Raw PCAM files: validation with one clear line per problem, block streaming, the one tile cleaning."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import pcamflow
from pcam_fixtures import alternating_labels, random_tiles, write_dataset, write_split

from pcamflow.data.rawdata import channel_histograms, clean_tiles, labels_path, open_split, open_tiles
from pcamflow.errors import PcamflowError, first_line

N = 6


# ---- bad input: each case writes a split with one problem and names the file and phrase expected ----


def _good(tmp_path, n=N, **kw):
    return write_split(tmp_path / "raw", "train", random_tiles(n), alternating_labels(n), **kw)


def case_missing_file(tmp_path):
    x, y = _good(tmp_path)
    y.unlink()
    return x, y, y, "no such file"


def case_not_hdf5(tmp_path):
    x, y = _good(tmp_path)
    x.write_text("this is a CSV, not HDF5\n1,2,3\n")
    return x, y, x, "not an HDF5 file"


def case_truncated(tmp_path):
    x, y = _good(tmp_path)
    os.truncate(x, x.stat().st_size // 2)  # an interrupted download
    return x, y, x, "truncated"


def case_wrong_key_x(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(x, "images", random_tiles(N))
    return x, y, x, "no dataset 'x' (keys found: 'images')"


def case_wrong_key_y(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "labels", alternating_labels(N))
    return x, y, y, "no dataset 'y' (keys found: 'labels')"


def case_wrong_shape_x(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(x, "x", np.zeros((N, 32, 32, 3), np.uint8))
    return x, y, x, "shape (6, 32, 32, 3); expected (N, 96, 96, 3)"


def case_wrong_shape_y(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "y", np.zeros((N, 2), np.uint8))
    return x, y, y, "shape (6, 2); expected (N, 1, 1, 1) or (N,)"


def case_wrong_dtype_x(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(x, "x", random_tiles(N, dtype=np.int16))
    return x, y, x, "dtype int16; expected uint8, float32 or float64"


def case_wrong_dtype_y(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "y", np.array([b"tumour", b"normal"] * 3))
    return x, y, y, "expected integer or float labels"


def case_length_mismatch(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "y", alternating_labels(N - 1).reshape(-1, 1, 1, 1))
    return x, y, x, f"holds {N} tiles but {y} holds {N - 1} labels"


def case_labels_outside_0_1(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "y", np.array([0, 1, 1, 2, 0, 2], np.uint8).reshape(-1, 1, 1, 1))
    return x, y, y, "2 labels outside {0, 1} (first: 2 at row 3)"


def case_empty_split(tmp_path):
    x, y = write_split(tmp_path / "raw", "train", random_tiles(0), alternating_labels(0))
    return x, y, x, "empty split (0 tiles)"


BAD_INPUTS = {name[len("case_") :]: func for name, func in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_naming_the_file_and_no_output(tmp_path, case):
    x, y, bad_file, phrase = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "audit"
    proc = pcamflow(
        "audit",
        *("--x", str(x), "--y", str(y)),
        *("--out", str(out / "a.json"), "--plot", str(out / "a.png"), "--hashes", str(out / "a.npy")),
        check=False,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"pcamflow: error: {bad_file}: ")
    assert phrase in lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", ["labels_outside_0_1", "wrong_shape_x", "truncated"])
def test_bad_input_is_a_pcamflow_error_in_the_library(tmp_path, case):
    x, y, bad_file, phrase = BAD_INPUTS[case](tmp_path)
    with pytest.raises(PcamflowError, match=r"^[^\n]+$") as err, open_split(x, y):
        pass
    assert str(bad_file) in str(err.value) and phrase in str(err.value)


def test_float_labels_holding_nan_are_rejected(tmp_path):
    x, y = _good(tmp_path)
    write_dataset(y, "y", np.array([0, 1, np.nan, 1, 0, 1], np.float32))
    with pytest.raises(PcamflowError, match="1 labels outside"), open_split(x, y):
        pass


# ---- what is accepted ----


@pytest.mark.parametrize(
    ("labels", "shape"),
    [(np.array([0, 1, 1, 0], np.uint8), (1, 1, 1)), (np.array([0.0, 1.0, 1.0, 0.0]), ())],
    ids=["pcam-uint8-N111", "float-N"],
)
def test_labels_of_either_shape_and_type_are_read_as_uint8(tmp_path, labels, shape):
    x, y = write_split(tmp_path, "valid", random_tiles(4), labels, y_shape=shape)
    with open_split(x, y) as raw:
        assert raw.labels.dtype == np.uint8
        assert raw.labels.tolist() == [0, 1, 1, 0]
        assert raw.y_shape == (4, *shape)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_blocks_cover_every_tile_in_order(tmp_path, dtype):
    tiles = random_tiles(10, dtype=dtype)
    x, y = write_split(tmp_path, "train", tiles, alternating_labels(10))
    with open_split(x, y) as raw:
        blocks = list(raw.blocks(4))
    assert [start for start, _ in blocks] == [0, 4, 8]
    assert [len(block) for _, block in blocks] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), tiles)
    assert blocks[0][1].dtype == dtype


def test_an_x_file_alone_is_validated_and_streamed(tmp_path):
    tiles = random_tiles(5, dtype=np.float32)
    x, _ = write_split(tmp_path, "test", tiles, alternating_labels(5))
    with open_tiles(x) as raw:
        assert len(raw) == 5 and raw.dtype == np.float32
        np.testing.assert_array_equal(np.concatenate([b for _, b in raw.blocks(2)]), tiles)
    bad, _, _, phrase = case_wrong_dtype_x(tmp_path / "bad")
    with pytest.raises(PcamflowError, match=phrase), open_tiles(bad):
        pass


# ---- cleaning ----


def test_clean_tiles_zeroes_nan_and_inf_clips_and_rounds():
    raw = np.array([np.nan, np.inf, -np.inf, -5.0, 300.0, 1e9, 12.4, 12.6, 254.5, 0.0], np.float32)
    cleaned = clean_tiles(raw)
    assert cleaned.dtype == np.uint8
    assert cleaned.tolist() == [0, 0, 0, 0, 255, 255, 12, 13, 254, 0]  # 254.5 rounds half to even


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clean_tiles_match_nan_to_num_clip_round_on_every_kind_of_value(dtype):
    rng = np.random.default_rng(4)
    raw = rng.normal(128, 150, 20_000).astype(dtype)
    raw[::7] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 0.5, 1.5, 254.5, 255.5, 1e30, -1e30], raw[::7].size)
    reference = np.rint(np.clip(np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(clean_tiles(raw), reference)


def test_clean_tiles_leaves_its_input_alone_unless_in_place():
    raw = np.array([np.nan, 300.0], np.float64)
    clean_tiles(raw)
    assert np.isnan(raw[0]) and raw[1] == 300.0
    clean_tiles(raw, in_place=True)
    assert raw.tolist() == [0.0, 255.0]


def test_clean_tiles_keeps_uint8_tiles_as_they_are():
    tiles = random_tiles(2)
    assert clean_tiles(tiles) is tiles


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blocks_ask_the_disk_for_exactly_the_next_blocks_bytes(tmp_path, monkeypatch, dtype):
    x = random_tiles(10, dtype=dtype)
    x_path, _ = write_split(tmp_path, "train", x, alternating_labels(10))
    hinted = []
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, offset, length, advice: hinted.append((offset, length))
    )
    with open_tiles(x_path) as raw:
        starts = [start for start, _ in raw.blocks(4)]
    assert starts == [0, 4, 8] and len(hinted) == 2  # tiles 4-7 while 0-3 are worked on, then 8-9
    data = x_path.read_bytes()
    for (offset, length), expected in zip(hinted, (x[4:8], x[8:10])):
        assert data[offset : offset + length] == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blocks_read_into_buffers_in_turn_hold_the_same_tiles(tmp_path, dtype):
    x = random_tiles(10, dtype=dtype)
    x_path, _ = write_split(tmp_path, "train", x, alternating_labels(10))
    for buffers in (1, 2):
        with open_tiles(x_path) as raw:
            seen = [(start, block.copy(), block.base) for start, block in raw.blocks(4, buffers=buffers)]
        assert [start for start, _, _ in seen] == [0, 4, 8]
        np.testing.assert_array_equal(np.concatenate([block for _, block, _ in seen]), x)
        bases = [base for _, _, base in seen]
        assert all(base is not None for base in bases)
        assert len({id(base) for base in bases}) == buffers  # block k + buffers reuses block k's array
        assert all(bases[k] is bases[k + buffers] for k in range(len(bases) - buffers))


def test_chunked_tiles_are_read_without_a_hint(tmp_path, monkeypatch):
    x = random_tiles(6)
    x_path = write_dataset(tmp_path / "chunked_x.h5", "x", x, chunks=(2, 96, 96, 3))
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: pytest.fail("hinted a chunked dataset"))
    with open_tiles(x_path) as raw:
        np.testing.assert_array_equal(np.concatenate([b for _, b in raw.blocks(4)]), x)


def test_channel_histograms_count_each_value_per_channel():
    tiles = np.zeros((2, 96, 96, 3), np.uint8)
    tiles[0, ..., 1] = 7
    tiles[1, :10, :, 2] = 255
    hist = channel_histograms(tiles)
    assert hist.shape == (3, 256)
    assert hist[0, 0] == 2 * 96 * 96
    assert hist[1, 7] == 96 * 96 and hist[1, 0] == 96 * 96
    assert hist[2, 255] == 10 * 96 and hist.sum() == tiles.size


def test_channel_histograms_match_numpy_counts_on_any_layout_of_tiles():
    tiles = np.random.default_rng(3).integers(0, 256, (7, 96, 96, 3), dtype=np.uint8)
    many = np.random.default_rng(4).integers(0, 256, (200, 96, 96, 3), dtype=np.uint8)  # several images
    for view in (tiles, tiles[::2], tiles[:, ::-1], many):  # contiguous, strided, reversed rows
        expected = [np.bincount(view[..., c].ravel(), minlength=256) for c in range(3)]
        np.testing.assert_array_equal(channel_histograms(view), expected)
    assert channel_histograms(tiles[:0]).tolist() == np.zeros((3, 256), int).tolist()
    with pytest.raises(ValueError, match="counts cleaned uint8 RGB tiles, got float32"):
        channel_histograms(tiles.astype(np.float32))  # never their bytes read as if uint8


def test_labels_live_in_the_y_file_beside_the_x_file(tmp_path):
    x = tmp_path / "camelyonpatch_level_2_split_test_x.h5"
    assert labels_path(x) == tmp_path / "camelyonpatch_level_2_split_test_y.h5"
    assert labels_path(tmp_path / "mine_x.hdf5") == tmp_path / "mine_y.hdf5"
    with pytest.raises(PcamflowError, match=r"tiles\.h5: expected a raw PCAM '_x\.h5' file"):
        labels_path(tmp_path / "tiles.h5")


def test_first_line_of_an_error_message_or_its_type():
    assert first_line(OSError("  unable to open\n  details follow  ")) == "unable to open"
    assert first_line(ValueError()) == "ValueError"
