"""The input loader: whole batches of uint8 tiles gathered from the prepared store, resumable mid-epoch.

`BatchLoader` draws each epoch's indices with a seeded `torch.Generator` and gathers a batch with one
fancy-indexing call on the (possibly memory-mapped) array: no per-sample Python, no PIL, no HDF5.
Where the batch is gathered from (the same batches, bit for bit, either way):
  - device-resident: the whole uint8 train split lives on the device (`training.device_resident`;
    on CUDA by default when it fits, see `resident_fits`), so a batch is one on-device gather;
  - host: a gather from the host array (on a CPU, the batch itself); on CUDA the next batch is
    gathered into pinned memory and copied on a side stream while the current step runs (prefetch).
`pcamflow.data.transforms` turns the batches into the model's input.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pcamflow.data.store import Split
from pcamflow.errors import PcamflowError

log = logging.getLogger(__name__)

# `device_resident: auto` keeps the train split on a CUDA device when it takes at most this share of
# the memory free there at the start: the rest is left to the model, its activations and the optimizer
RESIDENT_SHARE = 0.5
RESIDENT_COPY_TILES = 8192  # tiles per host-to-device chunk (about 226 MB) when the split is copied over


class BatchLoader:
    """Batches of (uint8 tiles (B, 96, 96, 3), int64 labels (B,)) on `device`, resumable mid-epoch.

    Iterating runs the rest of the current epoch (a new one when none is in progress). The state
    (`state_dict`) is the generator state at the start of the epoch plus the number of batches
    already handed out, so a loader restored from it yields exactly the remaining batches.

    `resident`: keep the whole split on `device` (a copy made once) and gather each batch there.
    `prefetch` (host gathers only; default: on CUDA): gather the next batch in a background thread
    (and copy it on a side CUDA stream) while the caller works on the current one. Neither changes
    the batches, their values or the state: a batch's indices are fixed when its epoch starts.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
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
        if resident:  # the host array is no longer needed: a memory-mapped split's pages can go
            self.x = None
            self._x_device = resident_copy(split.x, self.device)
            self._y_device = torch.from_numpy(self.y).to(self.device)
        else:
            self.x = split.x
        self.prefetch = (self.device.type == "cuda") if prefetch is None else prefetch
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.balanced = balanced
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.position = 0  # batches handed out in the current epoch
        self._epoch_start_state: torch.Tensor | None = None  # set while an epoch is in progress
        self._order: np.ndarray | None = None  # this epoch's sample indices
        self._labels: np.ndarray | None = None  # and their labels
        self._weights = _balanced_weights(torch.from_numpy(self.y)) if balanced else None

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._order is None:
            self._start_epoch()
        if self.resident:
            batches = self._resident_batches(self.position)
        elif self.prefetch:
            batches = self._prefetched_batches(self.position)
        else:
            batches = (self._gather(k) for k in range(self.position, len(self)))
        for batch in batches:
            self.position += 1  # counts batches handed out, not gathered ahead
            yield batch
        self._order = self._labels = self._epoch_start_state = None
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
        self._order = self._labels = self._epoch_start_state = None
        self.position = 0
        if state["in_epoch"]:
            self._start_epoch()  # redraws the same order from the restored generator
            self.position = int(state["position"])

    def _start_epoch(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        n = len(self.y)
        if self.balanced:
            order = torch.multinomial(self._weights, n, replacement=True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        self._order = _sorted_per_batch(order.numpy(), self.batch_size)
        self._labels = self.y[self._order]
        self.position = 0

    def _batch(self, k: int) -> slice:
        """Batch k's run of this epoch's order."""
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def _y(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self._labels[self._batch(k)])

    def _host_batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k gathered on the host (into pinned memory when it goes to a CUDA device)."""
        idx = self._order[self._batch(k)]
        cuda = self.device.type == "cuda"
        shape = (len(idx), *self.x.shape[1:])
        # numpy's empty on a CPU: under deterministic algorithms (the training default) torch's
        # empty first fills the memory, slowly (8 ms for 128 tiles), and the gather overwrites it all
        x = (
            torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            if cuda
            else torch.from_numpy(np.empty(shape, np.uint8))
        )
        np.take(self.x, idx, axis=0, out=x.numpy(), mode="clip")  # clip: no bounds-check buffer
        return (x, self._y(k).pin_memory()) if cuda else (x, self._y(k))

    def _gather(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._host_batch(k)
        if self.device.type == "cuda":
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def _resident_batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start.. of this epoch, each one gather on the device (the order is copied there
        once per epoch, so a step does no host work and no host-to-device copy)."""
        order = torch.from_numpy(self._order).to(self.device)
        for k in range(start, len(self)):
            idx = order[self._batch(k)]
            yield self._x_device.index_select(0, idx), self._y_device.index_select(0, idx)

    def _prefetched_batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches start.. of this epoch, batch k + 1 gathered (and on CUDA copied to the device on
        a side stream) in a background thread while the caller uses batch k. numpy's gather
        releases the GIL, so the gather runs beside the training step."""
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None

        def load(k: int):
            x, y = self._host_batch(k)
            if not cuda:
                return x, y, None
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(stream)
            return x, y, copied

        pool = _prefetch_pool()
        pending = pool.submit(load, start) if start < len(self) else None
        for k in range(start, len(self)):
            x, y, copied = pending.result()
            pending = pool.submit(load, k + 1) if k + 1 < len(self) else None
            if cuda:  # the consumer's stream waits for the copy; the allocator learns who uses it
                current = torch.cuda.current_stream(self.device)
                current.wait_event(copied)
                x.record_stream(current)
                y.record_stream(current)
            yield x, y


def _sorted_per_batch(order: np.ndarray, batch_size: int) -> np.ndarray:
    """The epoch's order with each batch's indices sorted: a batch then reads a memory-mapped file
    front to back. Which tiles form each batch is unchanged; numpy, so a batch costs no torch calls."""
    order = order.copy()
    full = len(order) // batch_size * batch_size
    order[:full] = np.sort(order[:full].reshape(-1, batch_size), axis=1).reshape(-1)
    order[full:] = np.sort(order[full:])
    return order


def _balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1 / (count of its class): every class is drawn equally often."""
    counts = torch.bincount(y, minlength=2).double()
    return (1.0 / counts.clamp(min=1))[y]


def resident_fits(nbytes: int, free_bytes: int) -> bool:
    """The fit rule of `device_resident: auto`: the split takes at most RESIDENT_SHARE of the free memory."""
    return nbytes <= RESIDENT_SHARE * free_bytes


def device_resident(setting: bool | str, split: Split, device: str | torch.device) -> bool:
    """Whether training keeps `split` on `device` (`training.device_resident`: auto, true, false)."""
    device = torch.device(device)
    nbytes = split.x.nbytes + split.y.nbytes
    if setting == "auto":
        if device.type != "cuda":
            log.info(
                "input: host gathers (device_resident auto: the split stays in host memory on %s)", device
            )
            return False
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
    log.info("input: %s (device_resident %s)", "device-resident" if setting else "host gathers", setting)
    return bool(setting)


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


def _prefetch_pool() -> ThreadPoolExecutor:
    """This process's one prefetch thread (keyed by pid: a forked child has none of its parent's threads)."""
    return _prefetch_pools(os.getpid())


@functools.cache
def _prefetch_pools(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="pcamflow-prefetch")
