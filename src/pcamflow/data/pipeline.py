"""The input pipeline: whole batches gathered from the uint8 store, converted and augmented on the device.

`BatchLoader` draws each epoch's indices with a seeded `torch.Generator` and gathers a batch with one
fancy-indexing call on the (possibly memory-mapped) array: no per-sample Python, no PIL, no HDF5.
Where the batch is gathered from (the same batches, bit for bit, either way):
  - device-resident: the whole uint8 train split lives on the device (`training.device_resident`;
    on CUDA by default when it fits, see `resident_fits`), so a batch is one on-device gather;
  - host: a gather from the host array, copied to the device; on CUDA the next batch is gathered
    into pinned memory and copied on a side stream while the current step runs (prefetch);
  - lazy (CPU): the loader hands out `Tiles` (the batch's indices into the array) and the CPU
    transform's compiled pass reads each tile straight from the array: no intermediate uint8 batch.
`BatchTransform` turns uint8 NHWC tiles into normalised float NCHW on the device, with random D4
(flips and 90-degree rotations) and optional colour jitter in training only. `predict_proba` is the
one place predictions are made (evaluation, slices and export call it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pcamflow.data.cpu_kernel import CHANNELS, d4_normalise_threaded
from pcamflow.data.store import Split
from pcamflow.errors import PcamflowError

log = logging.getLogger(__name__)

D4_SIZE = 8  # 4 rotations x {identity, flip}
# `device_resident: auto` keeps the train split on a CUDA device when it takes at most this share of
# the memory free there at the start: the rest is left to the model, its activations and the optimizer
RESIDENT_SHARE = 0.5
RESIDENT_COPY_TILES = 8192  # tiles per host-to-device chunk (about 226 MB) when the split is copied over
_NO_NORMALISE = (np.ones(CHANNELS, np.float32), np.zeros(CHANNELS, np.float32))  # x * 1 + 0


@dataclasses.dataclass(frozen=True)
class Tiles:
    """A batch not gathered yet: rows `idx` of the uint8 (N, H, W, 3) array `source` (a lazy CPU batch).

    `BatchTransform` on a CPU reads the tiles straight from `source`; `gather()` is the uint8 batch.
    """

    source: np.ndarray  # in memory or memory-mapped
    idx: np.ndarray  # (B,) int64

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.idx), *self.source.shape[1:])

    def __len__(self) -> int:
        return len(self.idx)

    def gather(self) -> torch.Tensor:
        x = np.empty(self.shape, np.uint8)
        np.take(self.source, self.idx, axis=0, out=x, mode="clip")  # clip: no bounds-check buffer
        return torch.from_numpy(x)


class BatchLoader:
    """Batches of (uint8 tiles (B, 96, 96, 3), int64 labels (B,)) on `device`, resumable mid-epoch.

    Iterating runs the rest of the current epoch (a new one when none is in progress). The state
    (`state_dict`) is the generator state at the start of the epoch plus the number of batches
    already handed out, so a loader restored from it yields exactly the remaining batches.

    `resident`: keep the whole split on `device` (a copy made once) and gather each batch there.
    `prefetch` (host gathers only; default: on CUDA): gather the next batch in a background thread
    (and copy it on a side CUDA stream) while the caller works on the current one. Neither changes
    the batches, their values or the state: a batch's indices are fixed when its epoch starts.
    `lazy` (cpu device, host gathers): hand out `Tiles` instead of uint8 tensors; the CPU
    `BatchTransform` gathers them inside its compiled pass, over its threads.
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
        lazy: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if lazy and (resident or self.device.type != "cpu"):
            raise ValueError("lazy batches are host gathers on the cpu device")
        self.lazy = lazy
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
        elif self.lazy:
            batches = (
                (Tiles(self.x, self._order[self._batch(k)]), self._y(k))
                for k in range(self.position, len(self))
            )
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
        tiles = Tiles(self.x, self._order[self._batch(k)])
        if self.device.type != "cuda":
            return tiles.gather(), self._y(k)
        x = torch.empty(tiles.shape, dtype=torch.uint8, pin_memory=True)
        np.take(self.x, tiles.idx, axis=0, out=x.numpy(), mode="clip")
        return x, self._y(k).pin_memory()

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


@functools.cache
def _d4_index_maps(size: int, device: str = "cpu") -> torch.Tensor:
    """(8, size*size) gather indices: row t = flip (t // 4) then rotate by 90 degrees (t % 4) times."""
    grid = torch.arange(size * size).view(size, size)
    maps = []
    for t in range(D4_SIZE):
        g = grid.flip(1) if t // 4 else grid
        maps.append(torch.rot90(g, t % 4, dims=(0, 1)).reshape(-1))
    return torch.stack(maps).to(device)


def apply_d4(x: torch.Tensor, transform: torch.Tensor | int) -> torch.Tensor:
    """Apply D4 transform(s) to uint8 or float NHWC tiles: one int for all, or one per sample (B,)."""
    b, h, w, c = x.shape
    maps = _d4_index_maps(h, str(x.device))
    if isinstance(transform, int):
        return x.reshape(b, h * w, c)[:, maps[transform]].view(b, h, w, c)
    index = maps[transform.to(x.device)]  # (B, HW): one gather for the whole batch
    return torch.gather(x.reshape(b, h * w, c), 1, index[:, :, None].expand(b, h * w, c)).view(b, h, w, c)


class BatchTransform:
    """uint8 NHWC tiles on the device -> normalised float NCHW, augmented in training only.

    Normalisation uses the train-only statistics of the store (`pcamflow.data.store.load_stats`).
    Random draws come from the CPU `generator` the caller passes (part of the checkpointed state),
    so augmentation is reproducible whatever the device. On a CPU the D4 view, the conversion and
    the normalisation run as one compiled pass (`pcamflow.data.cpu_kernel`); `compiled=False` keeps to
    torch ops (what `torch.export` can trace). Both give bit-identical values.
    """

    def __init__(
        self,
        stats: dict,
        *,
        device: str | torch.device = "cpu",
        augment: bool = True,
        color_jitter: float = 0.0,
        channels_last: bool = False,
        compiled: bool = True,
    ):
        self.device = torch.device(device)
        mean = torch.tensor(stats["mean"], dtype=torch.float32, device=self.device)
        std = torch.tensor(stats["std"], dtype=torch.float32, device=self.device)
        # (x / 255 - mean) / std == x * scale + shift
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.augment = augment
        self.color_jitter = color_jitter
        self.channels_last = channels_last
        self.compiled = compiled and self.device.type == "cpu"
        if self.compiled:  # the kernel's (scale, shift) with and without normalisation
            self._kernel_args = {True: (self.scale.numpy(), self.shift.numpy()), False: _NO_NORMALISE}

    def to_input(
        self, x_uint8: torch.Tensor | Tiles, *, train: bool, generator: torch.Generator | None = None
    ):
        if isinstance(x_uint8, Tiles) and not self.compiled:
            x_uint8 = x_uint8.gather()  # only the compiled pass reads tiles where they are stored
        if not isinstance(x_uint8, Tiles):
            x_uint8 = x_uint8.to(self.device, non_blocking=True)
        transforms = None
        if train and self.augment:
            transforms = torch.randint(0, D4_SIZE, (x_uint8.shape[0],), generator=generator)
        if train and self.color_jitter > 0:
            # jitter works on 0..255 values, so normalisation waits until after it
            x = self._jitter(self._d4_float(x_uint8, transforms, normalise=False), generator)
            x = self._normalise_(x)
        else:
            x = self._d4_float(x_uint8, transforms, normalise=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    __call__ = to_input

    def _d4_float(
        self, x: torch.Tensor | Tiles, transforms: torch.Tensor | None, *, normalise: bool
    ) -> torch.Tensor:
        """float32 NCHW of uint8 NHWC tiles, tile i turned by D4 element transforms[i] (none: as is)."""
        if self.compiled:
            return _d4_normalise_compiled(x, transforms, *self._kernel_args[normalise])
        x = x.permute(0, 3, 1, 2)  # an NCHW view, no copy
        if transforms is None:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)
        else:
            out = _d4_nchw_float(x, transforms.cpu())
        return self._normalise_(out) if normalise else out

    def _normalise_(self, x: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std as one in-place multiply-add per channel, in NCHW order."""
        return x.mul_(self.scale.view(1, 3, 1, 1)).add_(self.shift.view(1, 3, 1, 1))

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-sample brightness and saturation factors in [1 - s, 1 + s]; values stay in [0, 255]."""
        s = self.color_jitter
        factors = 1 + s * (2 * torch.rand((2, len(x), 1, 1, 1), generator=generator) - 1)
        brightness, saturation = factors.to(self.device)
        x = x * brightness
        gray = x.mean(dim=1, keepdim=True)
        return (gray + (x - gray) * saturation).clamp_(0, 255)


def _d4_nchw_float(x: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """float32 NCHW copy of uint8 NCHW tiles, tile i turned by D4 element transforms[i] (as apply_d4).

    One flip/rot90 per D4 element on the samples that drew it: about 3x cheaper than a per-pixel
    gather, and the uint8 -> float conversion happens in the same copy. `transforms` stays on the
    host: which samples drew which element is found there, so CUDA work is queued without a sync.
    """
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for t in range(D4_SIZE):
        sel = (transforms == t).nonzero().squeeze(1)
        if len(sel):
            sel = sel.to(x.device, non_blocking=True)
            v = x.index_select(0, sel)
            v = v.flip(3) if t // 4 else v
            out.index_copy_(0, sel, torch.rot90(v, t % 4, dims=(2, 3)).float())
    return out


@functools.cache
def _d4_affine(size: int) -> np.ndarray:
    """(8, 3) int64: row t's source pixel of output (i, j) is base + i * row_step + j * col_step."""
    maps = _d4_index_maps(size).numpy().reshape(D4_SIZE, size, size)
    base = maps[:, 0, 0]
    if size == 1:
        return np.stack([base, base, base], axis=1)  # one pixel: the steps are never used
    return np.stack([base, maps[:, 1, 0] - base, maps[:, 0, 1] - base], axis=1)


def _d4_normalise_compiled(
    x: torch.Tensor | Tiles, transforms: torch.Tensor | None, scale: np.ndarray, shift: np.ndarray
) -> torch.Tensor:
    """`cpu_kernel.d4_normalise` on CPU tiles: uint8 (B, H, H, 3) -> float32 (B, 3, H, H); `Tiles`
    are read straight from their array."""
    b, h, w, c = x.shape
    if h != w or c != CHANNELS:
        raise ValueError(f"expected square RGB tiles (B, H, H, {CHANNELS}), got {tuple(x.shape)}")
    if isinstance(x, Tiles):  # the kernel checks the indices
        source, idx = np.asarray(x.source), np.asarray(x.idx, dtype=np.int64)
    else:
        source, idx = x.contiguous().numpy(), np.arange(b)
    transforms = np.zeros(b, dtype=np.int64) if transforms is None else transforms.numpy()  # 0: identity
    out = np.empty((b, c, h, w), dtype=np.float32)
    planes = out.reshape(b, c, h * w)  # a view: the kernel writes `out`
    tiles = source.reshape(len(source), -1)  # (N, H*W*3), a view
    d4_normalise_threaded(
        tiles, idx, transforms, _d4_affine(h), scale, shift, planes, h, w, torch.get_num_threads()
    )
    return torch.from_numpy(out)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    x_uint8_array,
    transform: BatchTransform,
    *,
    batch_size: int = 256,
    amp: str = "none",
    d4: int = 0,
) -> Iterator[torch.Tensor]:
    """Logits of consecutive batches (in order, eval mode, no augmentation); `d4` picks one D4 view."""
    model.eval()
    device = transform.device
    for start in range(0, len(x_uint8_array), batch_size):
        batch = torch.from_numpy(np.array(x_uint8_array[start : start + batch_size]))  # a writable copy
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        if d4:
            batch = apply_d4(batch, d4)
        with autocast(device, amp):
            logits = model(transform.to_input(batch, train=False))
        yield logits.float()


def predict_proba(
    model: torch.nn.Module,
    x_uint8_array,
    stats: dict,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    tta: bool = False,
    amp: str = "none",
    channels_last: bool = False,
    plain: np.ndarray | None = None,
) -> np.ndarray:
    """P(positive) for every tile of a uint8 (N, 96, 96, 3) array, in order; tta averages the 8 D4 views.

    `plain`: this model's tta=False result on the same tiles, when the caller already has it; it
    stands in for the identity view (view 0), so that view is not predicted a second time.
    """
    transform = BatchTransform(stats, device=device, augment=False, channels_last=channels_last)
    views = range(D4_SIZE) if tta else (0,)
    total = None
    for view in views:
        if view == 0 and plain is not None:
            prob = torch.from_numpy(np.asarray(plain, dtype=np.float64))
        else:
            chunks = [
                torch.softmax(logits, dim=1)[:, 1].cpu()
                for logits in predict_logits(
                    model, x_uint8_array, transform, batch_size=batch_size, amp=amp, d4=view
                )
            ]
            prob = torch.cat(chunks).double() if chunks else torch.zeros(0, dtype=torch.float64)
        total = prob if total is None else total + prob
    return (total / len(views)).numpy()


def autocast(device: torch.device, amp: str):
    """The autocast context of `amp` ('none', 'bf16', 'fp16') on this device."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
