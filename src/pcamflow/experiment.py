"""An experiment's identity: the settings its results depend on, recorded in its results root.

One results root (pcamflow.layout) holds the results of one experiment. The first workflow run
that starts jobs records there (experiment.json) the settings a training run's result depends on:
the data (dataset, the synthetic generator's settings, or data_dir and a signature of each raw
file), the audit thresholds, prepare and training, operational keys aside. A later config whose
settings differ is refused before any job, so a finished experiment is never retrained or
overwritten by another; grid values and seeds may grow (each has its own run directory).

The record also holds the checksum of the prepared store the runs were trained on (the store's
manifest; recorded once a store exists): a store whose content changed is another experiment too.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pcamflow import constants
from pcamflow.config import result_settings
from pcamflow.errors import PcamflowError
from pcamflow.io import read_json, write_json
from pcamflow.layout import EXPERIMENT_FILE

STORE_KEY = "store_checksum"  # experiment.json: the manifest checksum of the store trained on
# Config sections that decide what a training run produces (grid and seeds are paths, not here).
RESULT_SECTIONS = ("audit", "prepare", "training")
SIGNATURE_BYTES = 1 << 20  # read from each end of a raw file: quick, even for 7 GB of PCAM on GPFS


def experiment_settings(cfg: dict) -> dict:
    """Dotted key -> value of every setting the experiment's results depend on."""
    settings = {"dataset": cfg["dataset"]}
    if cfg["dataset"] == "synthetic":
        settings.update(_flatten({"synthetic": cfg["synthetic"]}))
    else:
        settings["data_dir"] = cfg["data_dir"]
        for split in constants.SPLITS:
            for kind in ("x", "y"):
                path = Path(cfg["data_dir"]) / constants.raw_filename(split, kind)
                settings[f"data_files.{split}_{kind}"] = file_signature(path)
    for section in RESULT_SECTIONS:
        settings.update(_flatten({section: result_settings(cfg, section)}))
    return json.loads(json.dumps(settings))  # the form it has once read back from experiment.json


def file_signature(path: Path) -> str | None:
    """Size and a hash of both ends of a file (None when absent: it is still to be downloaded)."""
    if not path.exists():
        return None
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(SIGNATURE_BYTES))
        fh.seek(max(0, size - SIGNATURE_BYTES))
        digest.update(fh.read(SIGNATURE_BYTES))
    return f"{size} bytes, sha256 of both ends {digest.hexdigest()[:16]}"


def differences(recorded: dict, current: dict) -> list[str]:
    """Keys whose values differ (a raw file absent on either side is not compared)."""
    return [
        key
        for key in recorded
        if key in current
        and recorded[key] != current[key]
        and not (key.startswith("data_files.") and None in (recorded[key], current[key]))
    ]


def check_experiment(cfg: dict, root: Path) -> None:
    """Refuse (one line) a config whose results would mix with another experiment's in root."""
    path = Path(root) / EXPERIMENT_FILE
    if not path.exists():
        return
    record = _read_record(path)
    changed = differences(record["settings"], experiment_settings(cfg))
    if changed:
        key = changed[0]
        more = (
            f" (and {len(changed) - 1} more setting{'s' if len(changed) > 2 else ''})" if changed[1:] else ""
        )
        raise PcamflowError(
            f"{path}: the results in {root}/ were made with {key}={record['settings'][key]!r}, this config "
            f"has {key}={experiment_settings(cfg)[key]!r}{more}; to keep both, give this config its own "
            f"experiment name (--config experiment=NAME, or `experiment: NAME` in its config file)"
        )


def record_experiment(cfg: dict, root: Path) -> None:
    """Write root/experiment.json (when missing or when a raw file appeared since; never otherwise)."""
    path = Path(root) / EXPERIMENT_FILE
    settings = experiment_settings(cfg)
    record = _read_record(path) if path.exists() else None
    if record is not None:
        check_experiment(cfg, root)
        # a raw file downloaded since: its signature joins the record; a recorded one is kept
        settings = {k: v if v is not None else record["settings"].get(k) for k, v in settings.items()}
        if settings == record["settings"]:
            return
    write_json(
        path,
        {
            **(record or {}),
            "experiment": cfg["experiment"],
            "created": record["created"] if record else datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": settings,
        },
    )


def record_trained_store(root: Path, checksum: str) -> None:
    """Before runs of root are trained on the prepared store of `checksum`: refuse it when they were
    trained on another (check_store_checksum), else record it when it is the first (the record must
    exist: record_experiment writes it when the workflow starts)."""
    check_store_checksum(root, checksum)
    path = Path(root) / EXPERIMENT_FILE
    if path.exists() and trained_store(root) is None:
        write_json(path, {**_read_record(path), STORE_KEY: checksum})


def trained_store(root: Path) -> str | None:
    """The checksum of the prepared store root's runs were trained on (None: none recorded yet)."""
    path = Path(root) / EXPERIMENT_FILE
    return _read_record(path).get(STORE_KEY) if path.exists() else None


def check_store_checksum(root: Path, checksum: str | None) -> None:
    """Refuse (one line) a prepared store whose checksum differs from the one root's runs were
    trained on: its content changed, so new runs would not be comparable with the finished ones."""
    recorded = trained_store(root)
    if checksum is None or recorded is None or checksum == recorded:
        return
    raise PcamflowError(
        f"{Path(root) / EXPERIMENT_FILE}: the runs in {root}/ were trained on the prepared store with "
        f"checksum {recorded[:16]}..., the store there now has {checksum[:16]}... (rebuilt from other "
        "data or by another version of prepare); to keep both, give this config its own experiment "
        "name (--config experiment=NAME, or `experiment: NAME` in its config file)"
    )


def _read_record(path: Path) -> dict:
    try:
        record = read_json(path)
    except (ValueError, OSError) as exc:
        raise PcamflowError(f"{path}: unreadable experiment record ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise PcamflowError(f"{path}: not an experiment record (no 'settings' mapping)")
    return record


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
