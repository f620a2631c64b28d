"""The device a run trains on, whether the train split lives on it, and the seeds and determinism
that make a run reproducible."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from pcamflow.data.store import Split
from pcamflow.errors import PcamflowError

log = logging.getLogger(__name__)

# `device_resident: auto` keeps the train split on a CUDA device when it takes at most this share of
# the memory free there at the start: the rest is left to the model, its activations and the optimizer
RESIDENT_SHARE = 0.5


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic algorithms and cuDNN (bit-identical twin runs on a CPU), or the fastest ones.

    Ops without a deterministic CUDA kernel warn instead of failing, so GPU runs still train.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    """'auto', 'cpu' or 'cuda' as a torch device; `key` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise PcamflowError(f"{key}: {name!r} is not a device; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise PcamflowError(f"{key}: cuda requested but no CUDA device is available here (use cpu)")
    return torch.device(name)


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise PcamflowError(
            f"training.amp: fp16 needs a CUDA device (training on {device.type}); use bf16 or none"
        )


def derived_seeds(seed: int, n: int) -> list[int]:
    """n independent seeds from one (loader order, augmentation), via numpy's SeedSequence."""
    return [int(s) for s in np.random.SeedSequence(seed % 2**63).generate_state(n, dtype=np.uint64) >> 1]


def resident_fits(nbytes: int, free_bytes: int) -> bool:
    """The fit rule of `device_resident: auto`: the split takes at most RESIDENT_SHARE of the free memory."""
    return nbytes <= RESIDENT_SHARE * free_bytes


def device_resident(setting: bool | str, split: Split, device: str | torch.device) -> bool:
    """Whether training keeps `split` on `device` (`training.device_resident`: auto, true, false)."""
    device = torch.device(device)
    if setting != "auto":
        log.info("input: %s (device_resident %s)", "device-resident" if setting else "host gathers", setting)
        return bool(setting)
    if device.type != "cuda":
        log.info("input: host gathers (device_resident auto: the split stays in host memory on %s)", device)
        return False
    nbytes = split.x.nbytes + split.y.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    resident = resident_fits(nbytes, free)
    log.info(
        "input: %s (device_resident auto: train split %.2f GB, %.2f GB free on %s; resident up to %.0f%%)",
        "device-resident" if resident else "host gathers, prefetched",
        nbytes / 1e9,
        free / 1e9,
        device,
        100 * RESIDENT_SHARE,
    )
    return resident
