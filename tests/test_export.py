"""The model bundle: same probabilities as training-side prediction, checksums, loads without pcamflow."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_fixtures import make_bundle, stats_of, synthetic_tiles, tiny_model

from pcamflow.data.predictions import predict_proba
from pcamflow.deployment.export import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILE,
    load_bundle,
    verify_bundle,
)
from pcamflow.deployment.predict import predict_tiles
from pcamflow.errors import PcamflowError


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("export") / "bundle", threshold=0.25)


def _tiles(n=12):
    return synthetic_tiles("test", 256)[0][:n]


def test_bundle_holds_every_file_with_its_sha256(bundle_dir):
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == sorted(set(BUNDLE_FILES) - {MANIFEST_FILE})
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest() == digest
    meta = json.loads((bundle_dir / META_FILE).read_text())
    assert meta["threshold"] == 0.25
    assert meta["input"]["dtype"] == "uint8"


@pytest.mark.parametrize(
    ("name", "tta"), [("mlp", False), ("cnn", False), ("cnn", True), ("resnet18", False)]
)  # TTA is model-independent: one model shows it (resnet18 with TTA alone takes a minute)
def test_bundle_predicts_what_training_side_prediction_does(tmp_path, name, tta):
    model = tiny_model(name)
    bundle = load_bundle(make_bundle(tmp_path / name, model=model))
    x = _tiles(6)
    train = synthetic_tiles("train", 256)[0]
    expected = predict_proba(model, x, stats_of(train), batch_size=4, tta=tta)
    np.testing.assert_allclose(predict_tiles(bundle, x, tta=tta), expected, rtol=0, atol=1e-6)


def test_program_takes_any_batch_size_and_only_uint8(bundle_dir):
    program = load_bundle(bundle_dir).program
    x = torch.from_numpy(_tiles(5))
    with torch.no_grad():
        together = program(x)
        one_by_one = torch.cat([program(x[i : i + 1]) for i in range(len(x))])
        assert together.shape == (5,)
        torch.testing.assert_close(together, one_by_one, rtol=0, atol=1e-6)
        with pytest.raises(Exception):  # noqa: B017 - the guard's exception type is torch-internal
            program(x.float())


def test_program_holds_no_tensor_bound_to_the_cpu(bundle_dir):
    """What `--device cuda` relies on (no GPU here): the program moves whole to another device."""
    from torch.export.passes import move_to_device_pass

    program = move_to_device_pass(torch.export.load(bundle_dir / MODEL_FILE), "meta").module()
    out = program(torch.zeros((3, 96, 96, 3), dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.shape == (3,)


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (lambda d: _flip_middle_byte(d / MODEL_FILE), "altered"),
        (
            lambda d: (d / META_FILE).write_text((d / META_FILE).read_text().replace("0.25", "0.05")),
            "altered",
        ),
        (lambda d: (d / MODEL_FILE).unlink(), "missing from the bundle"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "not a complete model bundle"),
        (lambda d: (d / MANIFEST_FILE).write_text("{"), "unreadable manifest"),
    ],
    ids=["model bytes", "threshold", "missing file", "no manifest", "bad manifest"],
)
def test_a_damaged_bundle_is_refused_naming_the_file(bundle_dir, tmp_path, damage, phrase):
    import shutil

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(PcamflowError, match=phrase) as err:
        load_bundle(copy)
    assert str(copy) in str(err.value)


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_missing_bundle_directory_is_one_clear_line(tmp_path):
    with pytest.raises(PcamflowError, match="no such bundle directory"):
        verify_bundle(tmp_path / "nowhere")


def test_bundle_loads_and_predicts_with_torch_alone(bundle_dir, tmp_path):
    """A fresh interpreter that sees only torch's site-packages (no pcamflow, no .pth files, no
    PYTHONPATH, not even numpy in use) loads the program and gives the same probabilities."""
    x = _tiles(8)
    (tmp_path / "tiles.bin").write_bytes(x.tobytes())
    script = tmp_path / "standalone.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, json, sys
            sys.path.append({str(Path(torch.__file__).parents[1])!r})
            assert importlib.util.find_spec("pcamflow") is None, "pcamflow is importable"
            import torch
            program = torch.export.load({str(bundle_dir / MODEL_FILE)!r}).module()
            threshold = json.load(open({str(bundle_dir / META_FILE)!r}))["threshold"]
            data = bytearray(open("tiles.bin", "rb").read())
            tiles = torch.frombuffer(data, dtype=torch.uint8).reshape(-1, 96, 96, 3)
            with torch.no_grad():
                prob = program(tiles)
            print(json.dumps({{"prob": prob.tolist(), "label": (prob >= threshold).tolist(),
                              "pcamflow_loaded": "pcamflow" in sys.modules}}))
            """
        )
    )
    # -I: no user site, no PYTHONPATH, no script dir magic; -S: no site module, so no .pth files
    # (the editable install of pcamflow is one) are processed.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["pcamflow_loaded"]
    expected = predict_tiles(load_bundle(bundle_dir), x)
    np.testing.assert_allclose(out["prob"], expected, rtol=0, atol=1e-6)
    assert out["label"] == list(expected >= 0.25)


class _Marker:
    """A pickle payload that would create a directory when unpickled (code in a bundle)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_a_bundle_whose_program_holds_code_is_refused_before_loading(bundle_dir, tmp_path):
    """A pickle member that runs code on load (manifest re-hashed to match) is refused in one line."""
    import shutil
    import zipfile

    from pcamflow.io import sha256sum

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    marker = tmp_path / "code-ran"
    original = (copy / MODEL_FILE).read_bytes()
    with zipfile.ZipFile(io_bytes(original)) as src, zipfile.ZipFile(copy / MODEL_FILE, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                buffer = io_bytes(b"")
                torch.save(_Marker(marker), buffer)  # torch's own zip format, as torch.export writes it
                data = buffer.getvalue()
            dst.writestr(info, data)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"][MODEL_FILE] = sha256sum(copy / MODEL_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))

    with pytest.raises(PcamflowError) as err:
        load_bundle(copy)
    assert not marker.exists(), "the bundle's code ran"
    message = str(err.value)
    assert "\n" not in message and str(copy / MODEL_FILE) in message and "sample_inputs/model.pt" in message


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


def test_the_shipped_bundle_carries_no_local_path_and_no_credential(tmp_path):
    """Neither model.pt2 nor the handover tarball holds this machine's paths or the download URL's secret."""
    import gzip
    import zipfile
    from pathlib import Path as P

    from pcamflow.deployment.handover import write_handover

    bundle = make_bundle(tmp_path / "model")
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"seed": 0}))
    secret = "s3cr3t-t0ken"
    config = {
        "dataset": "pcam",
        "download": {"base_url": f"https://alice:{secret}@data.example.org/pcam?sig={secret}"},
    }
    tar_path = tmp_path / "handover.tar.gz"
    write_handover(tar_path, bundle, config, run_json)

    blobs = [gzip.decompress(tar_path.read_bytes())]
    with zipfile.ZipFile(bundle / MODEL_FILE) as program:  # members may be compressed
        blobs += [program.read(name) for name in program.namelist()]
    repo = str(P(__file__).resolve().parents[1])
    for needle in (repo, str(P.home()) + "/", secret):
        assert not any(needle.encode() in blob for blob in blobs), f"{needle} ships in the bundle"
    assert "data.example.org/pcam" in blobs[0].decode(errors="replace")  # the URL stays, minus its secret


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (
            lambda g: g["graph_module"]["graph"]["nodes"][0].update(target="torch.os.system"),
            "calls 'torch.os.system'",
        ),
        (lambda g: g.update(guards_code=["__import__('os').system('true')"]), "carries Python guard code"),
    ],
    ids=["graph calls a Python function", "guard code"],
)
def test_a_program_graph_that_would_run_python_is_refused(bundle_dir, tmp_path, edit, phrase):
    """Code need not hide in a pickle: the graph names the functions it calls and may carry guard code."""
    import shutil
    import zipfile

    from pcamflow.io import sha256sum

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    original = (copy / MODEL_FILE).read_bytes()
    with zipfile.ZipFile(io_bytes(original)) as src, zipfile.ZipFile(copy / MODEL_FILE, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("models/model.json"):
                graph = json.loads(data)
                edit(graph)
                data = json.dumps(graph).encode()
            dst.writestr(info, data)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"][MODEL_FILE] = sha256sum(copy / MODEL_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PcamflowError, match="refused to load") as err:
        load_bundle(copy)
    assert phrase in str(err.value)
