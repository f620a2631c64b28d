"""Checkpoints: plain dicts of tensors and Python primitives, written atomically, loaded weights-only.

A checkpoint never holds a pickled Python object, so it loads with `torch.load(weights_only=True)`;
a file that would run code on load is refused. RNG states of `random` and `numpy` are converted
to tensors and lists here for that reason.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from pcamflow.errors import PcamflowError
from pcamflow.io import atomic_path

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename: a crash never leaves half a file.
    Through a file object: a full disk is then an OSError naming `path` (given a path, torch.save
    raises RuntimeError "unexpected pos ..." instead)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(state, format_version=FORMAT_VERSION), fh)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True; refuse anything that would run code."""
    path = Path(path)
    if not path.exists():
        raise PcamflowError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the blocked global ("... unsupported GLOBAL posix.mkdir ..."): that is code.
        blocked = re.search(r"GLOBAL (\S+)", str(err))
        if blocked:
            raise PcamflowError(
                f"{path}: refused to load: it would call {blocked.group(1)} while loading (code in the "
                "file); pcamflow checkpoints hold only tensors and plain values"
            ) from None
        raise PcamflowError(
            f"{path}: refused to load: weights-only loading rejected its content (not a checkpoint of "
            "plain tensors and values)"
        ) from None
    except Exception as err:  # noqa: BLE001 - damaged bytes fail anywhere in the unpickler (KeyError, ...)
        raise PcamflowError(
            f"{path}: not a readable checkpoint (damaged, truncated or not a torch file: {type(err).__name__})"
        ) from None
    if isinstance(state, dict) and "failed" in state:  # written by runstatus.write_failed_run
        raise PcamflowError(f"{path}: the run failed, so it has no weights ({state['failed'].get('reason')})")
    if not isinstance(state, dict) or "model" not in state:
        raise PcamflowError(f"{path}: not a pcamflow checkpoint (no model weights in it)")
    found = state.get("format_version", "none")
    if found != FORMAT_VERSION:
        raise PcamflowError(
            f"{path}: checkpoint format {found}, this pcamflow reads format {FORMAT_VERSION} "
            "(train it again with this version)"
        )
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, run_config) from a checkpoint (best or last)."""
    from pcamflow.training.models import build_architecture

    state = load_checkpoint(path, map_location=device)
    run_config = state["run_config"]
    model = build_architecture(run_config["model"], run_config["training"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), run_config


# ---- RNG states as weights-only-loadable values ----


def capture_rng_state() -> dict:
    """Python, numpy, torch CPU and (when present) every CUDA device's RNG state."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
