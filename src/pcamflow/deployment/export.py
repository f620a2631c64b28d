"""The model bundle: one directory that holds everything needed to predict with the champion.

Layout (BUNDLE_FORMAT 1):
    model.pt2             a `torch.export` program: uint8 tiles (N, 96, 96, 3) as PCAM stores them
                          -> P(positive) (N,) float32; the training-side normalisation
                          (`transforms.BatchTransform`) is traced into the graph, so it cannot drift
    bundle.json           threshold, input/output contract, grid point, provenance
    drift_reference.json  the train split's intensity histogram and the drift thresholds (`pcamflow.deployment.drift`)
    MODEL_CARD.md         data, grid point, test metrics with CIs, intended use, weak slices, limits
    manifest.json         sha256 of every file above (written last; checked on every load)

What `manifest.json` proves: that no file changed since export (integrity). It does not prove who
made the bundle: anyone can write a bundle with a matching manifest. So loading trusts nothing in
model.pt2 beyond tensors: `check_program_archive` refuses, before torch sees it, any archive member
torch would unpickle or run as code (see there); the bytes checked are the bytes loaded.

Why torch.export rather than TorchScript: `torch.jit` is deprecated in the torch we pin and warns on
every call; an exported program loads with `torch.export.load` from torch alone, keeps the batch
dimension dynamic and moves between devices (`torch.export.passes.move_to_device_pass`).
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pcamflow import constants
from pcamflow.deployment.bundle_files import (  # noqa: F401 (re-exported: the bundle's file names)
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    CARD_FILE,
    DRIFT_FILE,
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILE,
)
from pcamflow.deployment.model_card import model_card
from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_path, read_json, sha256sum, write_json, write_text
from pcamflow.rundir import RUN_INFO

if TYPE_CHECKING:  # torch is imported where it is used: the Snakefile imports this module
    import torch

log = logging.getLogger(__name__)

MAX_BATCH = 1 << 16  # largest batch the exported program accepts


def tile_classifier(model, stats: dict):
    """Raw uint8 NHWC tiles -> P(positive): the training preprocessing and `model` in one module.

    The class is made here so that importing this module (the Snakefile does, for the file names)
    does not import torch.
    """
    import torch

    from pcamflow.data.transforms import BatchTransform

    class TileClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            # Evaluation's transform in the reference torch ops (traceable), so the graph holds the
            # training normalisation.
            self.transform = BatchTransform(stats, device="cpu", augment=False, cpu_accelerator="off")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(self.transform.to_input(x, train=False)), dim=1)[:, 1]

    return TileClassifier()


def export_program(model, stats: dict, path: str | os.PathLike) -> None:
    """Trace `model` with its normalisation into a torch.export program at `path` (CPU, fp32)."""
    import torch

    module = tile_classifier(model.to("cpu").float(), stats)
    example = torch.zeros((2, *constants.TILE_SHAPE), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    strip_source_locations(program)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not our temporary name
    torch.export.save(program, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def strip_source_locations(program) -> None:
    """Drop the stack traces torch.export keeps per graph node: they hold this machine's absolute
    source paths (home directories on a cluster), and a bundle leaves the machine."""
    for module in program.graph_module.modules():
        if hasattr(module, "graph"):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    model,
    stats: dict,
    threshold: float,
    reference: dict,
    card: str,
    metadata: dict,
) -> None:
    """Write every bundle file into out_dir, the manifest last."""
    out_dir = Path(out_dir)
    if not 0.0 <= threshold <= 1.0:
        raise PcamflowError(f"threshold {threshold!r}: must lie in [0, 1]")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # a half-rewritten bundle never verifies
    export_program(model, stats, out_dir / MODEL_FILE)
    write_json(out_dir / META_FILE, bundle_metadata(stats, threshold, metadata))
    write_json(out_dir / DRIFT_FILE, reference)
    write_text(out_dir / CARD_FILE, card)
    files = {name: sha256sum(out_dir / name) for name in BUNDLE_FILES if name != MANIFEST_FILE}
    manifest = {"bundle_format": BUNDLE_FORMAT, "algorithm": "sha256", "files": files}
    write_json(out_dir / MANIFEST_FILE, manifest)
    log.info(
        "bundle %s: manifest sha256 %s (publish it beside the bundle: the manifest proves the files are "
        "intact, not who made them)",
        out_dir,
        bundle_sha256(out_dir),
    )


def bundle_sha256(bundle_dir: str | os.PathLike) -> str:
    """The bundle's own fingerprint: sha256 of its manifest, which holds every other file's sha256.
    Compare it with the one printed at export (out of band) to know the bundle is the one exported."""
    return sha256sum(Path(bundle_dir) / MANIFEST_FILE)


def bundle_metadata(stats: dict, threshold: float, metadata: dict) -> dict:
    """bundle.json: the contract a user of model.pt2 relies on, then what the model is."""
    import torch

    return {
        "bundle_format": BUNDLE_FORMAT,
        "model_file": MODEL_FILE,
        "loader": "torch.export.load(model.pt2).module()",
        "input": {
            "dtype": "uint8",
            "shape": ["N", *constants.TILE_SHAPE],
            "layout": "NHWC, RGB, values 0-255 as PCAM stores them (no scaling, no normalisation)",
        },
        "output": "P(positive): tumour tissue in the centre 32 x 32 px region, float32 (N,)",
        "threshold": float(threshold),
        "label_rule": "label = 1 when probability >= threshold",
        "normalisation": {"mean": list(stats["mean"]), "std": list(stats["std"]), "scale": "value / 255"},
        "torch_version": torch.__version__,
        **metadata,
    }


# ---- reading a bundle ----


@dataclass
class Bundle:
    path: Path
    program: torch.nn.Module  # callable: uint8 (N, 96, 96, 3) on `device` -> (N,) float32
    device: torch.device
    threshold: float
    metadata: dict
    reference: dict


def verify_bundle(bundle_dir: str | os.PathLike) -> dict:
    """Check every file against manifest.json; a missing or altered file is one clear line."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise PcamflowError(f"{bundle_dir}: no such bundle directory (export one with the `export` rule)")
    manifest_path = bundle_dir / MANIFEST_FILE
    if not manifest_path.exists():
        raise PcamflowError(f"{manifest_path}: missing; not a complete model bundle")
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise PcamflowError(
            f"{manifest_path}: unreadable manifest (not JSON with a 'files' mapping)"
        ) from None
    if manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise PcamflowError(
            f"{manifest_path}: bundle format {manifest.get('bundle_format')!r}; this pcamflow reads {BUNDLE_FORMAT}"
        )
    for name in BUNDLE_FILES[:-1]:
        if name not in files:
            raise PcamflowError(f"{manifest_path}: lists no checksum for {name}")
    for name, expected in files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise PcamflowError(f"{path}: missing from the bundle (listed in {MANIFEST_FILE})")
        if sha256sum(path) != expected:
            raise PcamflowError(
                f"{path}: sha256 differs from {MANIFEST_FILE}; the file was altered or corrupted "
                "after export (re-export or copy the bundle again)"
            )
    return manifest


def load_bundle(bundle_dir: str | os.PathLike, device: str = "cpu") -> Bundle:
    """Verify the checksums and that model.pt2 holds no code, then load it onto `device` ('cpu' or 'cuda')."""
    import torch
    from torch.export.passes import move_to_device_pass

    from pcamflow.training.device import resolve_device

    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    target = resolve_device(device, key="--device")
    program = torch.export.load(
        io.BytesIO(read_program(bundle_dir / MODEL_FILE, manifest["files"][MODEL_FILE]))
    )
    if target.type != "cpu":
        program = move_to_device_pass(program, target)
    metadata = read_json(bundle_dir / META_FILE)
    return Bundle(
        path=bundle_dir,
        program=program.module(),
        device=target,
        threshold=float(metadata["threshold"]),
        metadata=metadata,
        reference=read_json(bundle_dir / DRIFT_FILE),
    )


def read_program(path: Path, sha256: str) -> bytes:
    """model.pt2's bytes, checked once more against the manifest and by `check_program_archive`:
    torch loads exactly these bytes, not the file again (which could change in between)."""
    import hashlib

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PcamflowError(f"{path}: sha256 differs from {MANIFEST_FILE} (changed while loading)")
    check_program_archive(data, path)
    return data


# Members of a torch.export archive (root folder stripped) that hold only tensors' raw bytes, JSON
# or short text. Anything else (AOTInductor shared libraries, pickled custom objects, extra files,
# the legacy pickle format) is refused: torch would unpickle or run it.
_PROGRAM_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt)"
)
_PICKLED_MEMBER = "data/sample_inputs/model.pt"  # example inputs: torch.load'ed, weights-only here
_GRAPH_TARGET = re.compile(r"torch\.ops\.aten\.[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
# a shape expression as torch writes it: symbols, integers and sympy's arithmetic, nothing callable
_SYMPY_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|'([a-z]\d+)'|([A-Za-z_]\w*)|(\*\*|//|[-+*/%(),=<>!]=?))")
_SYMPY_NAMES = {"Symbol", "Integer", "positive", "integer", "True", "False", "Mod", "FloorDiv", "CeilToInt"}
_SYMPY_NAMES |= {"PythonMod", "Max", "Min", "Abs", "Eq", "Ne", "TruncToInt", "IntTrueDiv", "CleanDiv"}


def check_program_archive(data: bytes, path: str | os.PathLike) -> None:
    """Refuse a torch.export archive that would run code when loaded or called, before torch reads it.

    torch.export.load unpickles without restriction pickled weights and constants, custom objects,
    and example inputs that fail a weights-only load; its graph names the functions it calls and
    may carry Python guard code and sympy expressions (which sympy evaluates). A pcamflow program
    holds tensors as raw bytes, aten operators, no guard code, and example inputs that load
    weights-only: anything else is refused naming the member.
    """
    import zipfile

    def refuse(member: str, why: str) -> PcamflowError:
        return PcamflowError(
            f"{path}: refused to load: member {member} {why}; a pcamflow bundle holds only tensors and an "
            "operator graph (re-export it, or get it from its author)"
        )

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError):
        raise PcamflowError(f"{path}: not a torch.export archive (not a zip file)") from None
    if len(set(names)) != len(names):
        raise PcamflowError(f"{path}: refused to load: the archive lists a member twice")
    root = names[0].split("/", 1)[0] + "/" if names else ""
    for name in names:  # all under one root folder, each a known kind of member
        if not name.startswith(root) or not _PROGRAM_MEMBERS.fullmatch(name[len(root) :]):
            raise refuse(name, "is not part of a plain exported program (it could be loaded as code)")
    if root + "models/model.json" not in names:
        raise PcamflowError(f"{path}: not a torch.export archive (no models/model.json)")
    try:
        _check_program_members(archive, root, refuse)
    except (KeyError, ValueError, AttributeError, TypeError):
        raise PcamflowError(f"{path}: not a readable torch.export archive (malformed JSON member)") from None


def _check_program_members(archive, root: str, refuse) -> None:
    """The configs store tensors as bytes, example inputs load weights-only, the graph holds only
    aten calls, no guard code and plain shape expressions (see check_program_archive)."""
    import json

    names = set(archive.namelist())

    def read(inner: str) -> bytes:
        return archive.read(root + inner)

    for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if root + config not in names:
            continue
        for fqn, payload in json.loads(read(config)).get("config", {}).items():
            if payload.get("use_pickle") or not re.fullmatch(
                r"(weight|tensor)_\d+", str(payload.get("path_name"))
            ):
                raise refuse(root + config, f"stores {fqn} as a pickled object, not as tensor bytes")
    if root + _PICKLED_MEMBER in names:
        _check_weights_only(read(_PICKLED_MEMBER), lambda why: refuse(root + _PICKLED_MEMBER, why))
    graph = json.loads(read("models/model.json"))
    if graph.get("guards_code"):
        raise refuse(root + "models/model.json", "carries Python guard code")
    for target in _graph_strings(graph, "target"):
        if not _GRAPH_TARGET.fullmatch(target):
            raise refuse(root + "models/model.json", f"calls {target!r}, not an aten operator")
    for expr in _graph_strings(graph, "expr_str"):
        if not _plain_shape_expression(expr):
            raise refuse(root + "models/model.json", f"holds the shape expression {expr[:60]!r}")


def _check_weights_only(data: bytes, refuse) -> None:
    """Load a pickled member with torch's weights-only unpickler: it refuses any callable but tensors'."""
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL (\S+)", str(err))
        raise refuse(
            f"is a pickle that calls {blocked.group(1) if blocked else 'code'} when loaded"
        ) from None
    except Exception as err:  # noqa: BLE001 - anything torch cannot load weights-only is refused
        raise refuse(f"is not a weights-only pickle ({type(err).__name__})") from None


def _graph_strings(obj, key: str):
    """Every string value of `key` anywhere in the graph JSON."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _graph_strings(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _graph_strings(v, key)


def _plain_shape_expression(expr: str) -> bool:
    position = 0
    while position < len(expr.rstrip()):
        token = _SYMPY_TOKEN.match(expr, position)
        if not token or (
            token.group(3)
            and token.group(3) not in _SYMPY_NAMES
            and not re.fullmatch(r"[a-z]\d+", token.group(3))
        ):
            return False
        position = token.end()
    return True


# ---- the drift reference from the prepared store ----


def train_reference(store_dir: str | os.PathLike, thresholds: dict, block_size: int = 4096) -> dict:
    """The drift reference of the store's train split, read block by block (memory-mapped)."""
    from pcamflow.data.store import load_split
    from pcamflow.deployment.drift import HistogramAccumulator, make_reference

    train = load_split(store_dir, "train", mmap=True)
    histogram = HistogramAccumulator()
    for start in range(0, len(train), block_size):
        histogram.update(np.asarray(train.x[start : start + block_size]))
    return make_reference(histogram.counts, histogram.n_tiles, thresholds)


# ---- the champion's bundle (rule export) ----


def export_champion(
    champion_json: str | os.PathLike,
    evaluate_json: str | os.PathLike,
    slices_csv: str | os.PathLike,
    store_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dataset: str,
    tta: bool,
    drift: dict,
) -> None:
    """Bundle the champion's deployed checkpoint with its validation threshold.

    `dataset`, `tta` and `drift` are the config's `dataset`, `evaluate.tta` (whether the threshold
    was chosen on TTA probabilities) and `export.drift`.
    """
    import pandas as pd

    from pcamflow.data.store import load_stats, verify_store
    from pcamflow.io import now_iso
    from pcamflow.training.checkpoint import load_model

    champion, evaluation = read_json(champion_json), read_json(evaluate_json)
    deploy = evaluation["deploy"]
    if deploy["seed"] != champion["deploy"]["seed"] or evaluation["champion"] != champion["id"]:
        raise PcamflowError(
            f"{evaluate_json}: evaluates {evaluation['champion']} seed {deploy['seed']}, but {champion_json} "
            f"names {champion['id']} seed {champion['deploy']['seed']} (rerun the evaluation)"
        )
    run_dir = Path(champion["deploy"]["run_dir"])
    run_info = read_json(run_dir / RUN_INFO)
    checksum = verify_store(store_dir, ("train",))  # the drift reference reads the train split
    if run_info.get("data_checksum") != checksum:
        raise PcamflowError(
            f"{run_dir / RUN_INFO}: trained on prepared data {run_info.get('data_checksum')}, but "
            f"{store_dir} is {checksum}: its statistics would not match the model"
        )
    model, run_config = load_model(deploy["checkpoint"])
    stats = load_stats(store_dir)
    metadata = {
        "champion": champion["id"],
        "grid_point": champion["grid_point"],
        "model": run_config["model"],
        "seed": deploy["seed"],
        "best_epoch": champion["deploy"]["best_epoch"],
        "checkpoint": str(deploy["checkpoint"]),
        "run_dir": str(run_dir),
        "tta": bool(tta),
        "threshold_rule": f"highest threshold reaching recall >= {evaluation['target_recall']} on validation",
        "dataset": dataset,
        "data_checksum": run_info.get("data_checksum"),
        "git": run_info.get("git"),
        "exported": now_iso(),
    }
    card = model_card(
        metadata=metadata,
        champion=champion,
        evaluation=evaluation,
        slices=pd.read_csv(slices_csv),
        run_config=run_config,
        stats=stats,
        threshold=float(deploy["threshold"]),
    )
    reference = train_reference(store_dir, drift)
    write_bundle(
        out_dir,
        model=model,
        stats=stats,
        threshold=float(deploy["threshold"]),
        reference=reference,
        card=card,
        metadata=metadata,
    )
