"""The offline handover (rule handover): results/handover.tar.gz holds the model bundle, the
resolved config (without credentials), the deployed run's run.json, the exact package versions and
a README (templates/handover_readme.md.j2) that installs and predicts without network."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from pcamflow.deployment.export import (
    BUNDLE_FILES,
    CARD_FILE,
    DRIFT_FILE,
    MANIFEST_FILE,
    META_FILE,
    MODEL_FILE,
    verify_bundle,
)
from pcamflow.deployment.render import render_template
from pcamflow.io import atomic_path, read_json
from pcamflow.rundir import RUN_INFO

HANDOVER_ROOT = "pcamflow-bundle"
LOCK_FILE = "requirements.lock"
README_TEMPLATE = "handover_readme.md.j2"


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
    return render_template(
        README_TEMPLATE,
        champion=metadata.get("champion"),
        seed=metadata.get("seed"),
        threshold=f"{metadata['threshold']:.4f}",
        tta=bool(metadata.get("tta")),
        commit=(metadata.get("git") or {}).get("commit"),
        torch_local=torch_version.split("+", 1)[1] if "+" in torch_version else None,
        model_file=MODEL_FILE,
        meta_file=META_FILE,
        drift_file=DRIFT_FILE,
        card_file=CARD_FILE,
        manifest_file=MANIFEST_FILE,
        lock_file=LOCK_FILE,
        run_file=RUN_INFO,
    )


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
