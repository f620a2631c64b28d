"""The course's own input pipeline, rebuilt faithfully; kept only as the benchmark's baselines.

Per sample it reads one tile and one label from the raw H5 files, cleans the tile (NaN/inf -> 0,
clip, uint8), goes through PIL (`ToPILImage`, `ToTensor`, `Normalize`), and a
`WeightedRandomSampler` balances the classes; a `DataLoader` with worker processes batches it.

Two baselines differ only in how the H5 files are opened:
  - `course` (`CourseH5Dataset`): the course loader as it was: both files opened lazily, once per
    DataLoader worker process, and kept open;
  - `reopen` (`ReopenH5Dataset`): both files opened anew for every tile (as torchvision's `PCAM`
    does), about three times slower.
`pcamflow throughput --mode course|reopen` times them against the new pipeline (`pcamflow.data.loader` and `pcamflow.data.transforms`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pcamflow import constants
from pcamflow.data.rawdata import clean_tiles, labels_path, open_split

# The template normalised with fixed per-channel values; the values do not change the cost.
TEMPLATE_MEAN = (0.5, 0.5, 0.5)
TEMPLATE_STD = (0.5, 0.5, 0.5)
PREFETCH_FACTOR = 2  # batches each DataLoader worker makes ahead: DataLoader's default, as the course ran it
DRAWS = 1 << 17  # tiles drawn per pass of `course_batches` (about half a minute at the course's pace)


class CourseH5Dataset(Dataset):
    """One tile per __getitem__, read from H5 files each worker process opens once and keeps open."""

    def __init__(self, x_path: str | os.PathLike):
        self.x_path = Path(x_path)
        self.y_path = labels_path(x_path)
        with open_split(self.x_path, self.y_path) as raw:  # validates both files once
            self.labels = raw.labels
        from torchvision import transforms  # 1.8 s to import: only where the course loader runs

        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.ToTensor(),
                transforms.Normalize(TEMPLATE_MEAN, TEMPLATE_STD),
            ]
        )
        self._files = None  # (pid, x dataset, y dataset, the two open files) once opened

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tile, label = self._read(i)
        return self.transform(clean_tiles(tile)), torch.tensor(int(np.asarray(label).reshape(-1)[0]))

    def _read(self, i: int):
        """Tile i and its label from this process's open files (opened at its first read)."""
        if self._files is None or self._files[0] != os.getpid():  # a forked worker opens its own
            fx, fy = h5py.File(self.x_path, "r"), h5py.File(self.y_path, "r")
            self._files = (os.getpid(), fx[constants.X_KEY], fy[constants.Y_KEY], fx, fy)
        _, x, y, _, _ = self._files
        return x[i], y[i]

    def __getstate__(self) -> dict:
        # open h5py files cannot be pickled (spawned workers); each worker opens its own anyway
        return {**self.__dict__, "_files": None}


class ReopenH5Dataset(CourseH5Dataset):
    """As CourseH5Dataset, but both files are opened anew for every tile (torchvision's `PCAM`)."""

    def _read(self, i: int):
        with h5py.File(self.x_path, "r") as fx, h5py.File(self.y_path, "r") as fy:
            return fx[constants.X_KEY][i], fy[constants.Y_KEY][i]


DATASETS = {"course": CourseH5Dataset, "reopen": ReopenH5Dataset}


def balanced_sampler(labels: np.ndarray, num_samples: int, seed: int) -> WeightedRandomSampler:
    """Each sample weighted by 1 / its class count, so both classes are drawn equally often."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights), num_samples=num_samples, replacement=True, generator=generator
    )


def course_batches(
    x_path: str | os.PathLike, batch_size: int, *, workers: int, seed: int = 0, kind: str = "course"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of the course's DataLoader over class-balanced draws from a raw `_x.h5` file;
    `kind` picks the file handling: `course` (the course's, kept open) or `reopen` (per tile).

    Long passes of DRAWS draws with persistent workers: the workers never stop making batches
    ahead, so a clock started or stopped anywhere sees the loader's steady state."""
    dataset = DATASETS[kind](x_path)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=balanced_sampler(dataset.labels, DRAWS, seed),
        num_workers=workers,
        prefetch_factor=PREFETCH_FACTOR if workers else None,
        persistent_workers=workers > 0,
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))
