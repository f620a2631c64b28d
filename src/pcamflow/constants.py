"""PCAM facts, defined once (Veeling et al. 2018; the dataset's Zenodo record and README)."""

SPLITS = ("train", "valid", "test")
TILE_SHAPE = (96, 96, 3)
CHANNELS = TILE_SHAPE[2]  # RGB, the last axis of a stored tile
CENTRE = 32  # the label depends on the centre 32x32 region
X_KEY = "x"
Y_KEY = "y"
Y_SHAPE = (1, 1, 1)
FILE_PATTERN = "camelyonpatch_level_2_split_{split}_{kind}.h5"
META_PATTERN = "camelyonpatch_level_2_split_{split}_meta.csv"
# Faults of a raw tile, as the audit flags them and the poisoned synthetic copy plants them.
FAULTS = ("nan", "inf", "out_of_range", "black", "white")
# File names pcamflow writes, used by the library and the rules (rules/common.smk) alike.
AUDIT_FILE = "{split}.json"  # one split's audit, in the audit directory
CROSS_SPLIT_FILE = "cross_split.json"  # duplicates across splits, beside the audits
PLANTED_FILE = "planted.json"  # what the synthetic generator planted, beside its H5 files
FULL_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}
COURSE_TRAIN_SIZE = 157_286
ZENODO_RECORD = 2546921
# The checksum of each raw .h5 (as `xxh128sum` prints it): in its download record and its audit.
RAW_CHECKSUM = "xxh128"
# MD5 of the published .gz files (the upstream README swaps valid and test).
GZ_MD5 = {
    "train_x": "1571f514728f59376b705fc836ff4b63",
    "train_y": "35c2d7259d906cfc8143347bb8e05be7",
    "valid_x": "d5b63470df7cfa627aeec8b9dc0c066e",
    "valid_y": "2b85f58b927af9964a4c15b8f7e8f179",
    "test_x": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "test_y": "60a7035772fbdb7f34eb86d4420cf66a",
}
REFERENCE = {"model": "P4M-DenseNet (Veeling et al. 2018)", "test_accuracy": 0.898, "test_auc": 0.963}


def raw_filename(split: str, kind: str) -> str:
    """File name of one raw PCAM file; kind is 'x' or 'y'."""
    return FILE_PATTERN.format(split=split, kind=kind)


def meta_filename(split: str) -> str:
    return META_PATTERN.format(split=split)
