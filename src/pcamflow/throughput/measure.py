"""`pcamflow throughput`: images per second of one configuration, appended to a CSV as one row.

Modes: `data` (the input pipeline alone: batches from the prepared store, normalised and
augmented on the device), `course` (the course's loader, `pcamflow.throughput.baselines`, read from a raw
`_x.h5` file that each worker opens once), `reopen` (the same loader reopening the files for every
tile), `forward` (the model in eval mode without gradients) and `train` (a full training step fed
by the pipeline; the row also says how long the step waited for input).

`timed_steps` is the one clock (the command, the rule and `benchmarks/` all read it): warm-up steps
are not timed, and both the warm-up and the timed steps last at least `min_seconds`, so one-time
costs (first calls, first touches of fresh batch memory) stay out of the figure and a fast
configuration is timed over a window long enough to trust. CUDA is synchronised before every clock
read, and an out-of-memory error becomes a row with status `oom`. `write_partition_csv` runs a partition's whole matrix for
the rule `throughput` through the same `bench_row` as the command.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import io
import itertools
import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from pcamflow import provenance
from pcamflow.config import validate_section, validate_training
from pcamflow.data.loader import BatchLoader
from pcamflow.data.predictions import autocast
from pcamflow.data.store import Split, load_split, load_stats
from pcamflow.data.transforms import BatchTransform
from pcamflow.errors import PcamflowError, check_output_file, first_line
from pcamflow.io import now_iso, write_csv
from pcamflow.training.device import configure_determinism, device_resident
from pcamflow.training.models import MODELS, build_model
from pcamflow.training.step import build_step_parts, train_step

log = logging.getLogger(__name__)

MODES = ("data", "course", "reopen", "forward", "train")
MODEL_MODES = ("forward", "train")  # the modes a model and a precision apply to
BASELINE_MODES = ("course", "reopen")  # the course's loader: raw H5 file, DataLoader workers
NOT_APPLICABLE = "-"  # model/precision of data and baseline rows
AMP = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}  # bench precision -> training.amp
BENCH_SEED = 0
BENCH_OPTIMIZER, BENCH_LR = "adam", 1e-3  # the step's cost hardly depends on them
# warmup and steps: the steps run (at least the ones asked for; more when min_seconds needs them);
# img_per_s = images / seconds over the timed steps (wall clock); cpu_seconds is this process's
# CPU time then (the baseline loaders' workers not included); data_time_s is the part of `seconds`
# spent waiting for the next input batch; peak_rss_mb is this process's peak during the row;
# status is ok, oom, skipped (not measured: message says why) or error. slurm_job_id and node
# (SLURMD_NODENAME) are blank outside Slurm; device_model is the CPU or GPU model.
COLUMNS = (
    "partition",
    "mode",
    "model",
    "batch_size",
    "precision",
    "device",
    "workers",
    "threads",
    "warmup",
    "steps",
    "images",
    "seconds",
    "img_per_s",
    "cpu_seconds",
    "data_time_s",
    "peak_rss_mb",
    "peak_gpu_mem_mb",
    "status",
    "message",
    "hostname",
    "slurm_job_id",
    "node",
    "device_model",
    "torch_version",
    "timestamp",
)


@dataclass
class BenchSpec:
    """One configuration to measure."""

    mode: str
    data: str  # prepared store directory; for `course` and `reopen` a raw _x.h5 file
    model: str = "cnn"
    batch_size: int = 64
    precision: str = "fp32"
    device: str = "cpu"
    workers: int = 0
    warmup: int = 3
    steps: int = 20
    min_seconds: float = 0.0  # the warm-up and the timed steps each last at least this long
    partition: str = ""
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    training: dict = field(default_factory=dict)  # model settings (cnn_width, mlp_hidden, ...)

    @property
    def uses_model(self) -> bool:
        return self.mode in MODEL_MODES


@dataclass
class Measurement:
    warmup: int  # untimed steps run
    steps: int  # timed steps run
    seconds: float  # wall time of the timed steps
    images: int
    data_time_s: float  # of which waiting for the next input batch
    cpu_seconds: float  # CPU time of this process over the timed steps


# ---- the command ----


def cli_main(args) -> int:
    given = {
        key: getattr(args, key)
        for key in ("workers", "warmup", "steps", "min_seconds")
        if getattr(args, key) is not None
    }
    settings = validate_section("throughput", given, source="pcamflow throughput")
    spec = BenchSpec(
        mode=args.mode,
        data=args.data,
        model=args.model,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        workers=settings["workers"],
        warmup=settings["warmup"],
        steps=settings["steps"],
        min_seconds=settings["min_seconds"],
        partition=args.partition,
        threads=args.threads,
    )
    reason = invalid_reason(spec)
    if reason:
        raise PcamflowError(reason)
    check_output_file(args.out, inputs=[args.data])  # before the measurement, not after it
    row = bench_row(spec)
    append_row(args.out, row)
    log.info(_summary_line(row))
    return 1 if row["status"] == "error" else 0


# ---- one configuration -> one row ----


def invalid_reason(spec: BenchSpec) -> str | None:
    """Why this configuration cannot run on this machine (None when it can)."""
    if spec.mode not in MODES:
        return f"--mode {spec.mode!r}: choose one of {', '.join(MODES)}"
    for name in ("batch_size", "steps"):
        if getattr(spec, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}"
    for name in ("warmup", "workers", "threads", "min_seconds"):
        if getattr(spec, name) < 0:
            return f"--{name} must not be negative, got {getattr(spec, name)}"
    if spec.uses_model and spec.model not in MODELS:
        return f"--model {spec.model!r}: unknown (choose one of {', '.join(MODELS)})"
    if spec.device == "cuda" and not torch.cuda.is_available():
        return "device cuda requested but this machine has no CUDA (torch.cuda.is_available() is False)"
    if spec.uses_model and spec.precision == "fp16" and spec.device != "cuda":
        return "precision fp16 runs on CUDA only; use fp32 or bf16 on a CPU"
    return None


def bench_row(spec: BenchSpec) -> dict:
    """Measure one valid configuration; out-of-memory and failures become rows, not crashes.

    A PcamflowError (missing or bad data) is the user's to fix and propagates.
    """
    if spec.threads:
        torch.set_num_threads(spec.threads)
    _reset_peak_memory(spec.device)
    try:
        measured = MEASURES[spec.mode](spec)
    except PcamflowError:
        raise
    except Exception as exc:  # one failing configuration must not stop a partition's matrix
        if _is_out_of_memory(exc):
            return _row(spec, "oom", first_line(exc))
        log.exception("bench %s failed", _describe(spec))
        return _row(spec, "error", f"{type(exc).__name__}: {first_line(exc)}")
    finally:
        if spec.device == "cuda":
            torch.cuda.empty_cache()
    return _row(spec, "ok", "", measured)


def skipped_row(spec: BenchSpec, reason: str) -> dict:
    """The row of a configuration that was not measured, with the reason (never numbers)."""
    return _row(spec, "skipped", reason, peaks=False)


def _row(spec: BenchSpec, status: str, message: str, measured: Measurement | None = None, peaks=True) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(
        partition=spec.partition,
        mode=spec.mode,
        model=spec.model if spec.uses_model else NOT_APPLICABLE,
        batch_size=spec.batch_size,
        precision=spec.precision if spec.uses_model else NOT_APPLICABLE,
        device=spec.device,
        workers=spec.workers if spec.mode in BASELINE_MODES else 0,  # the pipeline runs in this process
        threads=torch.get_num_threads(),
        warmup=measured.warmup if measured else spec.warmup,
        steps=measured.steps if measured else spec.steps,
        status=status,
        message=message,
        hostname=platform.node(),
        # the journal's "partition / node type / job id" table: job and node blank outside Slurm
        slurm_job_id=provenance.slurm_job_id(),
        node=os.environ.get("SLURMD_NODENAME"),
        device_model=provenance.device_model(spec.device),
        torch_version=torch.__version__,
        timestamp=now_iso(),
    )
    if measured is not None:
        row.update(
            images=measured.images,
            seconds=round(measured.seconds, 9),  # a fast data row takes well under a millisecond
            img_per_s=round(measured.images / measured.seconds, 3),
            cpu_seconds=round(measured.cpu_seconds, 6),
            data_time_s=round(measured.data_time_s, 6),
        )
    if peaks:
        row.update(peak_rss_mb=_peak_rss_mb(), peak_gpu_mem_mb=_peak_gpu_mem_mb(spec.device))
    return row


# ---- the CSV ----


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row (header first when the file is new), under an exclusive lock.

    The row goes out in a single write, so concurrent `pcamflow throughput` calls on one CSV do not
    interleave; a CSV whose header differs from ours is refused rather than mixed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        header = fh.readline().rstrip("\r\n")
        text = _csv_line(row.keys()) if not header else ""
        if header and header != _csv_line(row.keys()).rstrip("\r\n"):
            raise PcamflowError(f"{path}: existing CSV has other columns than `pcamflow throughput` writes")
        fh.write(text + _csv_line(row.values()))
        fh.flush()


def _csv_line(values: Iterable) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


# ---- the measurements ----


def timed_steps(batches: Iterator, step: Callable, spec: BenchSpec, device: str | None = None) -> Measurement:
    """Run (next batch, step(batch)) untimed for at least `spec.warmup` steps and `spec.min_seconds`
    after the first step, then timed for at least `spec.steps` steps and `spec.min_seconds`.

    The first step pays the one-time costs (a compile, the first allocations) and may alone last
    `min_seconds`: the warm-up's time starts after it, so the steps that still settle stay out of
    the clock too. The device is synchronised around each clock read, so asynchronous CUDA work is
    charged to the step that queued it and `data_time_s` is the time spent waiting for input.
    """
    sync = torch.cuda.synchronize if (device or spec.device) == "cuda" else _no_sync
    first = _run_steps(batches, step, 1, 0.0, sync)[0] if spec.warmup or spec.min_seconds else 0
    warmup = first + _run_steps(batches, step, spec.warmup - first, spec.min_seconds, sync)[0]
    cpu_start = time.process_time()
    steps, seconds, images, data_time = _run_steps(batches, step, spec.steps, spec.min_seconds, sync)
    return Measurement(warmup, steps, seconds, images, data_time, time.process_time() - cpu_start)


def _run_steps(
    batches: Iterator, step: Callable, steps: int, min_seconds: float, sync: Callable
) -> tuple[int, float, int, float]:
    """At least `steps` steps, and at least `min_seconds` of them: (steps, seconds, images, data time)."""
    sync()
    start = time.perf_counter()
    done = images = 0
    data_time = 0.0
    while done < steps or time.perf_counter() - start < min_seconds:
        before = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            raise PcamflowError(f"the input ran out after {done} batches (fewer tiles than one batch?)")
        sync()
        data_time += time.perf_counter() - before
        images += batch[0].shape[0]
        step(batch)
        sync()
        done += 1
    return done, time.perf_counter() - start, images, data_time


def measure_course(spec: BenchSpec) -> Measurement:
    """The course's loader (`course`: files kept open; `reopen`: reopened per tile), as an endless
    stream: its workers always have the next batches in hand, so the clock sees the loader's steady
    state at both ends."""
    from pcamflow.throughput.baselines import course_batches

    batches = course_batches(
        spec.data, spec.batch_size, workers=spec.workers, seed=BENCH_SEED, kind=spec.mode
    )
    return timed_steps(batches, _no_step, spec, device="cpu")


def measure_data(spec: BenchSpec) -> Measurement:
    """The input pipeline alone: gather, move to the device, normalise and augment."""
    settings = _training_settings(spec)
    configure_determinism(settings["deterministic"])  # as training runs it, whatever ran before
    batches = pipeline_batches(_loader(spec, settings), _transform(spec, settings), train=True)
    return timed_steps(batches, _no_step, spec)


def measure_forward(spec: BenchSpec) -> Measurement:
    """Forward passes in eval mode without gradients, at the precision, on one prepared batch."""
    settings = _training_settings(spec)
    configure_determinism(settings["deterministic"])
    model = _model(spec, settings).eval()
    batch = next(pipeline_batches(_loader(spec, settings), _transform(spec, settings), train=False))
    device = torch.device(spec.device)

    def forward(batch):
        with torch.inference_mode(), autocast(device, settings["amp"]):
            model(batch[0])

    return timed_steps(itertools.repeat(batch), forward, spec)


def measure_train(spec: BenchSpec) -> Measurement:
    """Training steps (`pcamflow.training.step.train_step`: forward, backward, optimizer, schedule) fed by
    the pipeline. The input time counts gathering and the device transform, the rest is compute."""
    settings = _training_settings(spec)
    configure_determinism(settings["deterministic"])
    loader = _loader(spec, settings)
    parts = build_step_parts(
        _model(spec, settings).train(),
        settings,
        device=torch.device(spec.device),
        optimizer=BENCH_OPTIMIZER,
        lr=BENCH_LR,
        steps_per_epoch=len(loader),
    )
    batches = pipeline_batches(loader, _transform(spec, settings), train=True)
    return timed_steps(batches, lambda batch: train_step(parts, batch[0], batch[1], False), spec)


MEASURES: dict[str, Callable[[BenchSpec], Measurement]] = {
    "course": measure_course,
    "reopen": measure_course,
    "data": measure_data,
    "forward": measure_forward,
    "train": measure_train,
}


def pipeline_batches(
    loader: BatchLoader, transform: BatchTransform, *, train: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (model input, labels) batches of the store's train split, made as training makes them."""
    generator = generator or torch.Generator().manual_seed(BENCH_SEED)
    while True:  # one epoch per pass over the loader
        for x, y in loader:
            yield transform.to_input(x, train=train, generator=generator), y


@functools.lru_cache(maxsize=1)
def train_split(store_dir: str) -> Split:
    """The store's train split, loaded once per process: a partition's matrix reuses it for every
    row instead of reading (on real PCAM) 7 GB again."""
    return load_split(store_dir, "train")


def _training_settings(spec: BenchSpec) -> dict:
    """The training settings the model and pipeline are built with, at the bench's device and precision."""
    settings = validate_training(spec.training, source="training")
    return dict(settings, device=spec.device, amp=AMP[spec.precision] if spec.uses_model else "none")


def _loader(spec: BenchSpec, settings: dict) -> BatchLoader:
    """The train split's loader, on the input path training would take (`training.device_resident`)."""
    split = train_split(os.fspath(spec.data))
    resident = device_resident(settings["device_resident"], split, spec.device)
    return BatchLoader(
        split,
        spec.batch_size,
        seed=BENCH_SEED,
        balanced=settings["sampler"] == "balanced",
        device=spec.device,
        resident=resident,
    )


def _transform(spec: BenchSpec, settings: dict) -> BatchTransform:
    return BatchTransform(
        load_stats(spec.data),
        device=spec.device,
        augment=settings["augment"],
        color_jitter=settings["color_jitter"],
        channels_last=settings["channels_last"],
        cpu_accelerator=settings["cpu_accelerator"],
    )


def _model(spec: BenchSpec, settings: dict) -> torch.nn.Module:
    model = build_model(spec.model, settings).to(spec.device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


# ---- a partition's matrix (the rule `throughput`) ----


def partition_specs(
    name: str, partition: dict, settings: dict, *, store: str, raw_x: str, training: dict, threads: int
) -> list[BenchSpec]:
    """Every configuration of the `throughput:` settings on one partition.

    forward/train: models x precisions x batch sizes; data and the baselines (course, reopen) do
    not involve a model or a precision, so they run once per batch size.
    """
    specs = []
    for mode in settings["modes"]:
        if mode in MODEL_MODES:
            combos = itertools.product(settings["models"], settings["precisions"], settings["batch_sizes"])
        else:
            combos = ((NOT_APPLICABLE, NOT_APPLICABLE, b) for b in settings["batch_sizes"])
        specs += [
            BenchSpec(
                mode=mode,
                data=raw_x if mode in BASELINE_MODES else store,
                model=model,
                batch_size=batch_size,
                precision=precision,
                device=partition["device"],
                workers=settings["workers"] if mode in BASELINE_MODES else 0,
                warmup=settings["warmup"],
                steps=settings["steps"],
                min_seconds=settings["min_seconds"],
                partition=name,
                threads=threads,
                training=training,
            )
            for model, precision, batch_size in combos
        ]
    return specs


def bench_partition(specs: list[BenchSpec]) -> list[dict]:
    """Measure every configuration this machine can run; the others become `skipped` rows with
    their reason (a GPU partition on a machine without CUDA, fp16 on a CPU), never numbers."""
    rows = []
    for spec in specs:
        reason = invalid_reason(spec)
        row = skipped_row(spec, reason) if reason else bench_row(spec)
        log.info(_summary_line(row))
        rows.append(row)
    return rows


def write_partition_csv(
    name: str, partition: dict, settings: dict, out: str | os.PathLike, **paths_and_settings
) -> pd.DataFrame:
    """The rule `throughput`: one partition's whole matrix -> its CSV (written atomically)."""
    if partition["device"] == "cuda" and not torch.cuda.is_available():
        log.warning(
            "partition %s needs CUDA, which this machine lacks: not measured; its rows say 'skipped'", name
        )
    specs = partition_specs(name, partition, settings, **paths_and_settings)
    rows = pd.DataFrame(bench_partition(specs), columns=list(COLUMNS))
    write_csv(out, rows)
    return rows


# ---- helpers ----


def _no_sync() -> None:
    pass


def _no_step(batch) -> None:
    pass


def _describe(spec: BenchSpec) -> str:
    keys = ("partition", "mode", "model", "batch_size", "precision", "device", "workers")
    return " ".join(f"{k}={v}" for k, v in asdict(spec).items() if k in keys)


def _summary_line(row: dict) -> str:
    what = " ".join(
        f"{k}={row[k]}" for k in ("partition", "mode", "model", "batch_size", "precision", "device")
    )
    if row["status"] == "ok":
        return f"bench {what}: {row['img_per_s']} img/s"
    return f"bench {what}: {row['status']} ({row['message']})"


def _is_out_of_memory(exc: Exception) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError of a failed CPU allocation."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _reset_peak_memory(device: str) -> None:
    # Writing 5 to clear_refs resets the kernel's peak RSS (VmHWM), so each row's peak is its own.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # lifetime peak


def _peak_gpu_mem_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
