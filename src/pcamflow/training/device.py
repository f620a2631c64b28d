"""The device a run trains on, and the seeds and determinism that make it reproducible."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from pcamflow.errors import PcamflowError


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
