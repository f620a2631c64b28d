"""benchmarks/scale.py: the full-size data-rule benchmark, run on a tiny share so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pcamflow import constants
from pcamflow.data.audit import audit_cross, audit_split, write_audit

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "scale.py"
RULES = ["audit:train", "audit:valid", "audit:test", "audit_cross", "prepare", "verify_store"]
HEADER = "code rule wall s CPU s peak RSS MiB read GB read bound s ratio I/O bound s ratio".split()  # noqa: SIM905


def _module():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _audited_set(tmp_path, scale, sizes) -> tuple[Path, object]:
    """A small float32 set written by the benchmark and audited in-process as the rules do."""
    planted = scale.write_set(tmp_path / "raw", sizes, np.float32, seed=1)
    run = tmp_path / "run"
    audit_dir = run / "audit"
    for split in constants.SPLITS:
        x, y = (tmp_path / "raw" / constants.raw_filename(split, k) for k in ("x", "y"))
        result = audit_split(x, y, split=split, block_size=100, black_max=10, white_min=245)
        write_audit(result, audit_dir / f"{split}.json", hashes_path=audit_dir / f"{split}_hashes.npy")
    audit_cross(
        {s: audit_dir / f"{s}_hashes.npy" for s in constants.SPLITS},
        {s: audit_dir / f"{s}.json" for s in constants.SPLITS},
        audit_dir / constants.CROSS_SPLIT_FILE,
    )
    return run, planted


@pytest.mark.slow  # the whole benchmark script
def test_scale_benchmark_prints_every_data_rule_against_its_read_bound_and_cleans_up(tmp_path):
    # a set of some 10 MB: the script's default free-disk margin (20 GB) is for full-size sets
    small = ["--fraction", "0.001", "--min-free-gb", "1"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *small, "--warm", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert (
        out.count("every audit found exactly the planted faults, duplicate groups and cross-split pairs") == 2
    )
    assert re.search(r"uint8: wrote \{'train': 262, 'valid': 64, 'test': 64\} tiles", out)
    for layout, itemsize in (("uint8", 1), ("float32", 4)):
        table = out.split(f"\n{layout}: page cache NOT dropped (warm reads)\n", 1)[1].splitlines()
        assert table[0].split() == HEADER
        rows = [line.split() for line in table[1 : 2 + len(RULES)]]
        assert [row[:2] for row in rows] == [["this", rule] for rule in RULES] + [["this", "audit"]]
        for row in rows:
            wall, cpu, rss, read_gb, bound, ratio, io_bound, io_ratio = map(float, row[-8:])
            assert wall > 0 and cpu > 0 and 30 < rss < 1024 and ratio > 0 and io_ratio > 0
            # tiny files read in milliseconds: the bounds show as 0.00 s, and each ratio is wall / bound
            assert wall / ratio == pytest.approx(bound, abs=0.006)
            assert wall / io_ratio == pytest.approx(io_bound, abs=0.006)
        # the audit of train reads its x file at least once (262 tiles of 27,648 values)
        assert float(rows[0][-5]) * 1e9 >= 262 * 27_648 * itemsize
        audits = [float(row[-8]) for row in rows[:3]]
        assert float(rows[-1][-8]) == pytest.approx(sum(audits), abs=0.2)  # the audits' total
    assert list(tmp_path.iterdir()) == []  # without --keep, nothing written is left


def test_the_planted_set_check_fails_when_the_audit_misses_a_planted_tile(tmp_path):
    scale = _module()
    run, planted = _audited_set(tmp_path, scale, {"train": 256, "valid": 64, "test": 64})
    scale.check_audit(run, planted)  # every planted fault, group and pair found
    assert planted.cross_pairs("train", "valid") > 0 and planted.faults["train"]["nan"] > 0
    planted.dup_groups["valid"] += 1
    with pytest.raises(SystemExit, match="valid duplicate groups: found"):
        scale.check_audit(run, planted)


def test_outputs_of_two_codes_are_compared_file_by_file(tmp_path):
    scale = _module()
    run, _ = _audited_set(tmp_path, scale, {"train": 64, "valid": 64, "test": 64})
    (run / "prepared").mkdir()
    (run / "prepared" / "manifest.json").write_text(
        json.dumps({"files": {"train_x.npy": "aa", "stats.json": "bb"}})
    )
    other = tmp_path / "other"
    shutil.copytree(run, other)
    assert scale.output_differences(run, other) == []
    report = json.loads((other / "audit" / "valid.json").read_text())
    report["faults"]["black"]["tiles"] += 1
    (other / "audit" / "valid.json").write_text(json.dumps(report))
    (other / "prepared" / "manifest.json").write_text(
        json.dumps({"files": {"train_x.npy": "ab", "stats.json": "bb"}})
    )
    assert scale.output_differences(run, other) == ["valid.json", "train_x.npy"]


def test_code_trees_are_checkouts_or_source_trees_and_a_wrong_one_is_refused(tmp_path):
    scale = _module()
    codes = scale.parse_codes([f"before={REPO}", f"after={REPO / 'src'}"])
    assert codes == {"before": str(REPO / "src"), "after": str(REPO / "src")}
    with pytest.raises(SystemExit, match=f"--code x={tmp_path}: no pcamflow package in {tmp_path}"):
        scale.parse_codes([f"x={tmp_path}"])
