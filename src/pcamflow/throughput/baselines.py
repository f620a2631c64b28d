"""A faithful rebuild of the course template's input pipeline, kept only as the benchmark baseline.

Per sample it opens the raw H5 files, reads one tile and one label, cleans the tile
(NaN/inf -> 0, clip, uint8), goes through PIL (`ToPILImage`, `ToTensor`, `Normalize`), and a
`WeightedRandomSampler` balances the classes; a `DataLoader` with worker processes batches it.
`pcamflow throughput --mode naive` times it against the new pipeline (`pcamflow.data.pipeline`).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import transforms

from pcamflow import constants
from pcamflow.data.rawdata import clean_tiles, labels_path, open_split

# The template normalised with fixed per-channel values; the values do not change the cost.
TEMPLATE_MEAN = (0.5, 0.5, 0.5)
TEMPLATE_STD = (0.5, 0.5, 0.5)


class NaiveH5Dataset(Dataset):
    """One tile per __getitem__, read from the H5 files opened anew each time (as the template did)."""

    def __init__(self, x_path: str | os.PathLike):
        self.x_path = Path(x_path)
        self.y_path = labels_path(x_path)
        with open_split(self.x_path, self.y_path) as raw:  # validates both files once
            self.labels = raw.labels
        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.ToTensor(),
                transforms.Normalize(TEMPLATE_MEAN, TEMPLATE_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with h5py.File(self.x_path, "r") as fx, h5py.File(self.y_path, "r") as fy:
            tile = fx[constants.X_KEY][i]
            label = fy[constants.Y_KEY][i]
        tile = clean_tiles(tile)
        return self.transform(tile), torch.tensor(int(np.asarray(label).reshape(-1)[0]))


def balanced_sampler(labels: np.ndarray, num_samples: int, seed: int) -> WeightedRandomSampler:
    """Each sample weighted by 1 / its class count, so both classes are drawn equally often."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights), num_samples=num_samples, replacement=True, generator=generator
    )


def naive_loader(
    x_path: str | os.PathLike, batch_size: int, *, workers: int, num_samples: int, seed: int = 0
) -> DataLoader:
    """The template's DataLoader over `num_samples` class-balanced draws from a raw `_x.h5` file."""
    dataset = NaiveH5Dataset(x_path)
    sampler = balanced_sampler(dataset.labels, num_samples, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
