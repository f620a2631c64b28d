"""Outputs that cannot be written are refused in one line before any work (item: no wasted epoch)."""

from __future__ import annotations

import pytest
from conftest import snakemake
from pcam_fixtures import write_raw_dir
from train_fixtures import write_store

from pcamflow.cli import main


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work ran although its output cannot be written")


@pytest.mark.parametrize("command", ["train", "audit", "synth"])
def test_an_output_under_or_at_a_file_fails_before_any_work(command, tmp_path, capsys, monkeypatch):
    from pcamflow.data import audit
    from pcamflow.data import synthesize as synth
    from pcamflow.training import train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    if command == "train":
        store = write_store(tmp_path / "store", {"train": 8, "valid": 4})
        config = tmp_path / "run.yaml"
        config.write_text(f"data: {store}\nmodel: cnn\nlr: 0.1\nbatch_size: 4\noptimizer: adam\nseed: 0\n")
        monkeypatch.setattr(train, "fit", _must_not_run)
        argv, out = ["train", "--config", str(config), "--out", str(blocker)], blocker
    elif command == "audit":
        raw = write_raw_dir(tmp_path / "raw", {"valid": 4})
        monkeypatch.setattr(audit, "audit_split", _must_not_run)
        x, y = (tmp_path / "raw" / f"camelyonpatch_level_2_split_valid_{k}.h5" for k in "xy")
        assert raw
        out = blocker / "valid.json"
        argv = ["audit", "--x", str(x), "--y", str(y), "--out", str(out)]
    else:
        monkeypatch.setattr(synth, "write_synthetic", _must_not_run)
        out = blocker / "synth"
        argv = ["synth", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pcamflow: error: --out {out}:") and "\n" not in err, err
    assert "is a file, not a folder" in err or "is a directory" not in err


def test_data_dir_that_is_a_file_fails_the_dry_run_in_one_line(workflow_dir, tmp_path):
    data_dir = tmp_path / "pcam.h5"
    data_dir.write_text("a file")
    proc = snakemake(workflow_dir, "-n", "--config", "dataset=pcam", f"data_dir={data_dir}", check=False)
    assert proc.returncode != 0
    assert f"key 'data_dir': {data_dir} is a file, not a folder" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
