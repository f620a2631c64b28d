"""The model bundle: one directory that holds everything needed to predict with the champion.

Layout (BUNDLE_FORMAT 1):
    model.pt2             a `torch.export` program: uint8 tiles (N, 96, 96, 3) as PCAM stores them
                          -> P(positive) (N,) float32; the training-side normalisation
                          (`pipeline.BatchTransform`) is traced into the graph, so it cannot drift
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pcamflow import constants
from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_path, read_json, sha256sum, write_json, write_text
from pcamflow.rundir import RUN_INFO

if TYPE_CHECKING:  # torch is imported where it is used: the Snakefile imports this module
    import torch

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MODEL_FILE = "model.pt2"
META_FILE = "bundle.json"
DRIFT_FILE = "drift_reference.json"
CARD_FILE = "MODEL_CARD.md"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, META_FILE, DRIFT_FILE, CARD_FILE, MANIFEST_FILE)
MAX_BATCH = 1 << 16  # largest batch the exported program accepts


def tile_classifier(model, stats: dict):
    """Raw uint8 NHWC tiles -> P(positive): the training preprocessing and `model` in one module.

    The class is made here so that importing this module (the Snakefile does, for the file names)
    does not import torch.
    """
    import torch

    from pcamflow.data.pipeline import BatchTransform

    class TileClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()
            # Evaluation's transform, in torch ops (traceable), so the graph holds the training normalisation.
            self.transform = BatchTransform(stats, device="cpu", augment=False, compiled=False)

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

    from pcamflow.training.train import resolve_device

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


# ---- the model card ----

METRIC_LABELS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f2": "F2",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
}
WEAK_MARGIN = 0.05  # a slice is weak when its recall or accuracy is this far below all tiles'
WEAK_MIN_TILES = 10  # smaller slices are listed but never called weak: too few to tell


def model_card(
    *,
    metadata: dict,
    champion: dict,
    evaluation: dict,
    slices,
    run_config: dict,
    stats: dict,
    threshold: float,
) -> str:
    """MODEL_CARD.md: what the model is, what it was trained and tested on, how well, and where not to use it."""
    seed = metadata["seed"]
    point = ", ".join(f"{k} {v}" for k, v in metadata["grid_point"].items())
    counts = stats.get("counts", {})
    sections = [
        f"# Model card: pcamflow champion `{metadata['champion']}`",
        "",
        _synthetic_warning(metadata["dataset"]),
        "## Model",
        "",
        f"- Grid point: {point}; the champion among {len(champion.get('ranking', []))} grid points by "
        f"{champion['rule']} (validation only).",
        f"- Deployed checkpoint: seed {seed} (the champion's best seed on validation), best epoch "
        f"{metadata['best_epoch']} by {run_config['training']['selection_metric']}; "
        f"{champion['n_params']:,} trainable parameters.",
        f"- Training: {_training_line(run_config['training'])}.",
        f"- Code: {_commit_line(metadata.get('git'))}.",
        f"- File `{MODEL_FILE}`: a torch.export program. Input: uint8 tiles (N, 96, 96, 3), RGB, 0-255 as "
        "PCAM stores them; it normalises them itself with the train statistics below. Output: P(tumour in "
        "the centre 32 x 32 px), float32 (N,).",
        "",
        "## Data",
        "",
        f"- Dataset: {metadata['dataset']} (PCAM format: 96 x 96 px RGB tiles at 10x, label = tumour in the "
        "centre 32 x 32 px). Prepared store checksum " + f"`{metadata.get('data_checksum')}`.",
        *(
            f"- {split}: {c.get('kept', '?')} tiles used ({c.get('dropped_total', 0)} dropped by prepare)"
            for split, c in counts.items()
        ),
        "- Normalisation (train split, value / 255): mean "
        + ", ".join(f"{v:.4f}" for v in stats["mean"])
        + "; std "
        + ", ".join(f"{v:.4f}" for v in stats["std"])
        + ".",
        "",
        "## Decision threshold",
        "",
        f"- **{threshold:.4f}**: label = 1 when P >= threshold. Chosen as the {metadata['threshold_rule']}, "
        "then applied unchanged to test"
        + (
            " (on probabilities averaged over the 8 D4 views: predict with --tta)."
            if metadata["tta"]
            else "."
        ),
        "",
        "## Test metrics",
        "",
        _metrics_table(evaluation, seed),
        "",
        "## Known weak slices",
        "",
        _slices_table(slices),
        "",
        "## Intended use",
        "",
        "- Research and teaching: ranking or triaging 96 x 96 px H&E tiles of lymph node sections like "
        "PCAM's, at PCAM's magnification, for metastatic tissue in the tile's centre.",
        "- Not a medical device and not validated for diagnosis: a pathologist decides.",
        "",
        "## Limits",
        "",
        "- Tiles from other tissues, stains, scanners or magnifications are outside what it was tested on; "
        "`pcamflow predict` compares every input's intensity histogram with the train split's "
        "(`drift_reference.json`) and warns with the numbers when they are far apart.",
        "- The threshold was set for a recall target on PCAM's validation split, where half the tiles are "
        "positive; at the lower prevalence of real slides, precision will be lower than on test.",
        "- One checkpoint (one seed): the spread over the champion's seeds in the table above shows how much "
        "a retrained model may differ.",
        "- The label concerns the centre 32 x 32 px only; tumour elsewhere in the tile is not a positive.",
        "",
        "## Use without pcamflow (torch alone)",
        "",
        "```python",
        "import json, torch",
        f'program = torch.export.load("{MODEL_FILE}").module()',
        f'threshold = json.load(open("{META_FILE}"))["threshold"]',
        "tiles = torch.from_numpy(x)  # uint8 (N, 96, 96, 3), as PCAM stores them",
        "with torch.no_grad():",
        "    probability = program(tiles)",
        "label = probability >= threshold",
        "```",
        "",
        f"`{MANIFEST_FILE}` holds the sha256 of every file; `pcamflow predict` checks them before loading, "
        f"and refuses a `{MODEL_FILE}` that holds anything but tensors and aten operators (code). The "
        "manifest proves the files are intact, not who made them: compare the sha256 of "
        f"`{MANIFEST_FILE}` with the one its author published (printed at export) before trusting it.",
        "",
    ]
    return "\n".join(sections)


def _synthetic_warning(dataset: str) -> str:
    if dataset != "synthetic":
        return ""
    return (
        "> **Trained and tested on pcamflow's synthetic PCAM-format data, not on real histology.** "
        "Its numbers show that the pipeline works; they say nothing about real tissue.\n"
    )


def _commit_line(git: dict | None) -> str:
    git = git or {}
    if not git.get("commit"):
        return "git commit unknown (not run from a git checkout)"
    return f"git commit {git['commit']}" + (" with uncommitted changes" if git.get("dirty") else "")


def _training_line(training: dict) -> str:
    keys = ("epochs", "scheduler", "weight_decay", "augment", "sampler", "amp")
    return ", ".join(f"{k} {training[k]}" for k in keys if k in training)


def _metrics_table(evaluation: dict, seed: int) -> str:
    """Deployed seed and champion mean at both thresholds, and the baselines: value ± std [CI]."""
    from pcamflow.evaluation.evaluate import format_cell

    metrics = evaluation["metrics"]
    ci = evaluation["bootstrap"]["ci"]
    rows = []
    for predictor, members in metrics.items():
        for member, by_threshold in members.items():
            if predictor.startswith("champion") and member not in (f"seed {seed}", "mean"):
                continue
            for name, cells in by_threshold.items():
                label = predictor if member in ("model", "") else f"{predictor}, {member}"
                if member == f"seed {seed}":
                    label += " (deployed)"
                where = "0.5" if name == "0.5" else f"validation ({cells['threshold']:.3f})"
                values = [format_cell(cells[m]) if m in cells else "" for m in METRIC_LABELS]
                rows.append(f"| {label} | {where} | " + " | ".join(values) + " |")
    head = "| model | threshold | " + " | ".join(METRIC_LABELS.values()) + " |"
    rule = "|" + " --- |" * (len(METRIC_LABELS) + 2)
    test = evaluation["test"]
    note = (
        f"Test split: {test['n']} tiles, {test['positives']} positive; predictions {evaluation['predictions']}. "
        f"Cells: value (± std over the champion's {len(evaluation['seeds'])} seeds in mean rows) "
        f"[{ci:.0%} percentile bootstrap interval, {evaluation['bootstrap']['resamples']} resamples of the test tiles]."
    )
    return "\n".join([note, "", head, rule, *rows])


def _slices_table(slices) -> str:
    """Every slice of the deployed model on test; weak ones (recall or accuracy well below all tiles') first."""
    overall = slices.loc[slices["family"] == "all"].iloc[0]
    rows, weak = [], 0
    for rec in slices.loc[slices["family"] != "all"].to_dict("records"):
        gaps = [
            f"{m} {rec[m]:.3f} vs {overall[m]:.3f}"
            for m in ("recall", "accuracy")
            if rec["n"] >= WEAK_MIN_TILES and _below(rec[m], overall[m])
        ]
        weak += bool(gaps)
        verdict = (
            "**weak**: " + "; ".join(gaps) if gaps else ("too few tiles" if rec["n"] < WEAK_MIN_TILES else "")
        )
        cells = [_number(rec[m]) for m in ("accuracy", "recall", "precision", "f2", "roc_auc")]
        rows.append(
            (
                not gaps,
                f"| {rec['family']} | {rec['slice']} | {rec['n']} | {rec['positives']} | "
                + " | ".join(cells)
                + f" | {verdict or _text(rec.get('undefined'))} |",
            )
        )
    intro = (
        f"{weak} slice(s) of the test split where the deployed model's recall or accuracy at the threshold "
        f"is more than {WEAK_MARGIN} below all tiles' (accuracy {overall['accuracy']:.3f}, recall "
        f"{overall['recall']:.3f}); empty cells are undefined metrics (reason in the last column)."
    )
    head = "| family | slice | n | positives | accuracy | recall | precision | F2 | ROC AUC | note |"
    rule = "|" + " --- |" * 10
    return "\n".join([intro, "", head, rule, *(row for _, row in sorted(rows, key=lambda r: r[0]))])


def _below(value, reference) -> bool:
    import math

    return value is not None and not math.isnan(value) and value < reference - WEAK_MARGIN


def _text(value) -> str:
    """A CSV cell as text: an empty cell reads back as NaN."""
    return value if isinstance(value, str) else ""


def _number(value) -> str:
    import math

    return "" if value is None or math.isnan(value) else f"{value:.3f}"


# ---- offline handover (rule handover) ----

HANDOVER_ROOT = "pcamflow-bundle"
LOCK_FILE = "requirements.lock"


def package_lock() -> str:
    """requirements.lock: `name==version` of every distribution in this environment but pcamflow."""
    import importlib.metadata
    import platform
    import sys

    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "pcamflow":
            pins[name.lower()] = f"{name}=={dist.version}"
    header = [
        "# Exact versions of the environment that exported this bundle (importlib.metadata).",
        f"# Python {platform.python_version()} on {platform.system()} {platform.machine()}; "
        f"download the wheels for the same Python, OS and architecture (see README.md).",
        f"# Interpreter: {sys.implementation.name}; pcamflow itself is not on PyPI: build its wheel "
        "from the commit in model/bundle.json.",
    ]
    return "\n".join([*header, *(pins[k] for k in sorted(pins))]) + "\n"


def handover_readme(metadata: dict) -> str:
    """README.md of the handover tarball: install without network, verify, predict."""
    import importlib.metadata

    # the pinned distribution's version: a local label (+cpu, +cu126) means PyTorch's own index
    torch_version = importlib.metadata.version("torch")
    local = torch_version.split("+", 1)[1] if "+" in torch_version else None
    index = f" --extra-index-url https://download.pytorch.org/whl/{local}" if local else ""
    commit = (metadata.get("git") or {}).get("commit") or "the commit you exported from"
    return f"""# pcamflow model bundle: champion `{metadata.get("champion")}`

Contents:

| path | what |
| --- | --- |
| `model/` | the model bundle: `{MODEL_FILE}` (torch.export program, uint8 tiles in, P(positive) out), `{META_FILE}` (threshold {metadata["threshold"]:.4f}, input contract), `{DRIFT_FILE}`, `{CARD_FILE}`, `{MANIFEST_FILE}` (sha256 of each) |
| `config.yaml` | the resolved workflow configuration that produced it |
| `run.json` | provenance of the deployed training run (seed {metadata.get("seed")}) |
| `{LOCK_FILE}` | exact versions of every package of the exporting environment |

Read `model/{CARD_FILE}` first: what the model was trained and tested on, how well, and its limits.

## 1. On a machine with network: build a wheel directory

Wheels are not in this tarball (torch alone is gigabytes). Use the same Python version, OS and CPU
architecture as the offline machine (`{LOCK_FILE}` names them):

```bash
mkdir wheels
pip download -r {LOCK_FILE} -d wheels/{index}
git clone <pcamflow repository> pcamflow && git -C pcamflow checkout {commit}
pip wheel --no-deps ./pcamflow -w wheels/
```

Copy `wheels/` and this directory to the offline machine.

## 2. Offline: install

```bash
python -m venv venv
venv/bin/pip install --no-index --find-links wheels/ -r {LOCK_FILE}
venv/bin/pip install --no-index --find-links wheels/ --no-deps pcamflow
```

## 3. Predict

```bash
venv/bin/pcamflow predict --model model/ --input tiles/ slide_x.h5 --out predictions.csv
```

Inputs: PCAM `_x.h5` files (labels of a `_y.h5` beside are copied into `y_true`), folders of
96 x 96 RGB PNG/TIFF tiles, or single image files (`--resize` converts other sizes). Options:
`--tta` (average over the 8 flips and rotations{"; the threshold was chosen with it" if metadata.get("tta") else ""}),
`--device cuda`, `--batch-size N`. Every row of the CSV holds `source`, `index`, `probability`,
`label` (probability >= threshold), `y_true` and `error` (why an input was skipped). The checksums
in `model/{MANIFEST_FILE}` are verified before loading; a warning names the numbers when the
input's intensities drift from the training data's.

## Without pcamflow (torch alone)

```python
import json, torch
program = torch.export.load("model/{MODEL_FILE}").module()
threshold = json.load(open("model/{META_FILE}"))["threshold"]
with torch.no_grad():
    probability = program(torch.from_numpy(x))  # x: uint8 (N, 96, 96, 3)
label = probability >= threshold
```
"""


def shareable_config(config: dict) -> dict:
    """The config as it may leave this machine: download.base_url without credentials."""
    import copy

    config = copy.deepcopy(config)
    download = config.get("download") or {}
    if isinstance(download.get("base_url"), str):
        download["base_url"] = redact_url(download["base_url"])
    return config


def redact_url(url: str) -> str:
    """A URL without its user:password@ and its query (signed URLs carry tokens there)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = ("<redacted>@" if parts.username or parts.password else "") + host
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "<redacted>" if parts.query else "", ""))


def write_handover(
    out: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    config: dict,
    run_json: str | os.PathLike,
) -> list[str]:
    """results/handover.tar.gz: bundle, resolved config, run.json, package lock, README; return its members."""
    import tarfile

    import yaml

    verify_bundle(bundle_dir)
    metadata = read_json(Path(bundle_dir) / META_FILE)
    generated = {
        "config.yaml": yaml.safe_dump(shareable_config(config), sort_keys=False),
        LOCK_FILE: package_lock(),
        "README.md": handover_readme(metadata),
    }
    members, now = [], int(time.time())

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"{HANDOVER_ROOT}/{name}")
        info.size, info.mode, info.mtime = len(data), 0o644, now
        tar.addfile(info, io.BytesIO(data))
        members.append(info.name)

    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name in BUNDLE_FILES:
            add(tar, f"model/{name}", (Path(bundle_dir) / name).read_bytes())
        add(tar, RUN_INFO, Path(run_json).read_bytes())
        for name, text in generated.items():
            add(tar, name, text.encode())
    return members
