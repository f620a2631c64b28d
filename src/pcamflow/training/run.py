"""One run's moving parts: what it trains with (Run, built once) and where it is (Progress)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pcamflow.data.loader import BatchLoader
from pcamflow.data.staging import stage_prepared
from pcamflow.data.store import Split, load_split, load_stats, verify_store
from pcamflow.data.transforms import BatchTransform
from pcamflow.training.device import (
    check_amp,
    configure_determinism,
    derived_seeds,
    device_resident,
    resolve_device,
    seed_everything,
)
from pcamflow.training.models import build_model
from pcamflow.training.step import StepParts, build_step_parts


@dataclasses.dataclass
class Run:
    """Everything a run trains with (built once; restored from a checkpoint on resume)."""

    cfg: dict
    settings: dict
    parts: StepParts  # model, optimizer, schedule, scaler
    loader: BatchLoader
    transform: BatchTransform
    augment_rng: torch.Generator
    valid: Split
    stats: dict
    state_dir: Path
    data_checksum: str

    @property
    def device(self) -> torch.device:
        return self.parts.device


@dataclasses.dataclass
class Progress:
    """Where the run is: completed epochs, optimizer steps, history, best metric, in-epoch sums."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    epochs: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    loss_sum: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    seen: int = 0  # training images so far in the current epoch
    epoch_train_s: float = 0.0  # training wall time so far in the current epoch
    train_time_s: float = 0.0  # all attempts together
    start_time: str = ""
    resumed_from: dict | None = None


def build_run(cfg: dict, state_dir: Path) -> Run:
    settings = cfg["training"]
    device = resolve_device(settings["device"])
    check_amp(settings["amp"], device)
    configure_determinism(settings["deterministic"])
    seed_everything(cfg["seed"])
    # on a Slurm node with scratch, read a node-local copy; cfg keeps the shared path (run.json, resume)
    data = stage_prepared(cfg["data"])
    data_checksum = verify_store(data, ("train", "valid"))  # what this job reads, once per job
    train_split, valid = load_split(data, "train"), load_split(data, "valid")
    stats = load_stats(data)
    model = build_model(cfg["model"], settings).to(device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loader_seed, augment_seed = derived_seeds(cfg["seed"], 2)
    resident = device_resident(settings["device_resident"], train_split, device)
    loader = BatchLoader(
        train_split,
        cfg["batch_size"],
        seed=loader_seed,
        balanced=settings["sampler"] == "balanced",
        device=device,
        resident=resident,
    )
    return Run(
        cfg=cfg,
        settings=settings,
        parts=build_step_parts(
            model,
            settings,
            device=device,
            optimizer=cfg["optimizer"],
            lr=cfg["lr"],
            steps_per_epoch=len(loader),
        ),
        loader=loader,
        transform=BatchTransform(
            stats,
            device=device,
            augment=settings["augment"],
            color_jitter=settings["color_jitter"],
            channels_last=settings["channels_last"],
            cpu_accelerator=settings["cpu_accelerator"],
        ),
        augment_rng=torch.Generator().manual_seed(augment_seed),
        valid=valid,
        stats=stats,
        state_dir=state_dir,
        data_checksum=data_checksum,
    )
