"""The input loader: seeded, resumable batches of uint8 tiles from the prepared store, each gathered
with one fancy-indexing call (no per-sample Python, no PIL, no HDF5)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pcamflow.data.store import Split
from pcamflow.errors import PcamflowError

RESIDENT_COPY_TILES = 8192  # tiles per host-to-device chunk (about 226 MB) when the split is copied over
Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 tiles (B, 96, 96, 3), int64 labels (B,)


class BatchLoader:
    """Batches (uint8 tiles, int64 labels) on `device`; iterating runs the rest of the current epoch
    (a new one when none is in progress). A batch is one gather: on `device` when `resident` (the whole
    split lives there), else from the host array, with `prefetch` (default: on CUDA) ahead on a side
    stream while the caller uses the batch before. Every path gives the same batches, bit for bit.

    The state is the generator state at the start of the epoch plus the batches handed out: a batch's
    indices are fixed when its epoch starts, so a restored loader yields exactly the remaining ones.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int,
        balanced: bool = False,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        resident: bool = False,
        prefetch: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.y = np.asarray(split.y, dtype=np.int64)
        self.resident = resident
        self.x = None if resident else split.x  # a resident memory-mapped split's pages can go
        if resident:
            self._x_device = resident_copy(split.x, self.device)
            self._y_device = torch.from_numpy(self.y).to(self.device)
        self.prefetch = (self.device.type == "cuda") if prefetch is None else prefetch
        self.batch_size = batch_size
        self.balanced = balanced
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.position = 0  # batches handed out in the current epoch
        self._epoch_start_state: torch.Tensor | None = None  # set while an epoch is in progress
        self._order: np.ndarray | None = None  # this epoch's sample indices

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._order is None:
            self._start_epoch()
        rest = range(self.position, len(self))
        if self.resident:
            batches = self._resident_batches(rest)
        elif self.prefetch:
            batches = self._prefetched_batches(rest)
        else:
            batches = map(self._host_batch, rest)
        for batch in batches:
            self.position += 1  # counts batches handed out, not gathered ahead
            yield batch
        self._order = self._epoch_start_state = None
        self.position = 0
        self.epoch += 1

    def state_dict(self) -> dict:
        in_epoch = self._order is not None
        return {
            "generator": (self._epoch_start_state if in_epoch else self.generator.get_state()).clone(),
            "epoch": self.epoch,
            "position": self.position,
            "in_epoch": in_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self._order = self._epoch_start_state = None
        self.position = 0
        if state["in_epoch"]:
            self._start_epoch()  # redraws the same order from the restored generator
            self.position = int(state["position"])

    def _start_epoch(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        n = len(self.y)
        if self.balanced:  # each sample weighs 1 / (count of its class): every class is drawn equally often
            weights = torch.from_numpy(1.0 / np.bincount(self.y, minlength=2).clip(min=1)[self.y])
            order = torch.multinomial(weights, n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator)
        self._order = _sorted_per_batch(order.numpy(), self.batch_size)

    def _batch(self, k: int) -> slice:
        """Batch k's run of this epoch's order."""
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def _host_batch(self, k: int, stream: torch.cuda.Stream | None = None) -> Batch:
        """Batch k gathered on the host, for a CUDA device into pinned memory and copied on `stream`."""
        idx = self._order[self._batch(k)]
        y = torch.from_numpy(self.y[idx])
        cuda = self.device.type == "cuda"
        shape = (len(idx), *self.x.shape[1:])
        # numpy's empty on a CPU: under deterministic algorithms (the training default) torch's
        # empty first fills the memory, slowly (8 ms for 128 tiles), and the gather overwrites it all
        if cuda:
            x = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        else:
            x = torch.from_numpy(np.empty(shape, np.uint8))
        np.take(self.x, idx, axis=0, out=x.numpy(), mode="clip")  # clip: no bounds-check buffer
        if not cuda:
            return x, y
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            return x.to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)

    def _resident_batches(self, ks: range) -> Iterator[Batch]:
        """Batches ks, each one gather on the device (the order is copied there once per epoch, so a
        step does no host work and no host-to-device copy)."""
        order = torch.from_numpy(self._order).to(self.device)
        for k in ks:
            idx = order[self._batch(k)]
            yield self._x_device.index_select(0, idx), self._y_device.index_select(0, idx)

    def _prefetched_batches(self, ks: range) -> Iterator[Batch]:
        """Host batches ks, each gathered ahead in a background thread (numpy's gather releases the GIL)."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def load(k: int):
            x, y = self._host_batch(k, stream)
            return x, y, None if stream is None else stream.record_event()  # the end of the copy

        pool = _prefetch_pool(os.getpid())
        pending = pool.submit(load, ks[0]) if ks else None
        for k in ks:
            x, y, copied = pending.result()
            pending = pool.submit(load, k + 1) if k + 1 < ks.stop else None
            if copied is not None:  # the caller's stream waits for the copy; the allocator learns who uses it
                current = torch.cuda.current_stream(self.device)
                current.wait_event(copied)
                x.record_stream(current)
                y.record_stream(current)
            yield x, y


def _sorted_per_batch(order: np.ndarray, batch_size: int) -> np.ndarray:
    """The epoch's order with each batch's indices sorted: a batch then reads a memory-mapped file
    front to back. Which tiles form each batch is unchanged; numpy, so a batch costs no torch calls."""
    full = len(order) // batch_size * batch_size
    batches = np.sort(order[:full].reshape(-1, batch_size), axis=1).reshape(-1)
    return np.concatenate([batches, np.sort(order[full:])])


def resident_copy(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 split as one tensor on `device`, copied in chunks (never a second full host copy)."""
    if device.type == "cpu" and not isinstance(x, np.memmap) and x.flags.writeable:
        return torch.from_numpy(x)  # already in host memory: shared, not copied
    try:
        out = torch.empty(x.shape, dtype=torch.uint8, device=device)
        for start in range(0, len(x), RESIDENT_COPY_TILES):
            chunk = torch.from_numpy(np.array(x[start : start + RESIDENT_COPY_TILES]))  # writable
            out[start : start + len(chunk)].copy_(chunk)
    except torch.OutOfMemoryError:
        raise PcamflowError(
            f"training.device_resident: the train split ({x.nbytes / 1e9:.2f} GB) does not fit on {device}; "
            "set it to auto or false"
        ) from None
    return out


@functools.cache
def _prefetch_pool(pid: int) -> ThreadPoolExecutor:
    """Process `pid`'s one prefetch thread (keyed by pid: a forked child has none of its parent's threads)."""
    return ThreadPoolExecutor(1, thread_name_prefix="pcamflow-prefetch")
