"""Preflight: one short job, with a training job's resources, checks the node before a sweep trains.

A sweep submits hundreds of training jobs; a wrong CUDA build, a missing scratch disk, an unreadable
store or an out-of-memory at the largest batch would fail every one of them. The preflight finds
these in one job and writes what it saw (results/preflight/<name>.json); the training jobs depend on
it, so when a check fails none of them is submitted. The failure is one line naming the partition
and the problem. Outside Slurm it checks the local device the same way.

Checks, in order: the device (CUDA visible when training.device asks for it; GPU model or MIG slice,
memory; bf16 support when training.amp is bf16; torch, CUDA and cuDNN versions); the prepared store,
read at the shared path; node-local scratch present, writable and large enough when the job asked
for it (--constraint=scratch-node); a few real training steps of the costliest grid point (the
largest model at its largest batch size) and one validation batch, with the peak memory.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import tempfile
import time
from pathlib import Path

import torch

from pcamflow import provenance
from pcamflow.data import staging
from pcamflow.data.predictions import predict_logits
from pcamflow.data.store import load_split, store_files, verify_store
from pcamflow.data.transforms import BatchTransform
from pcamflow.errors import PcamflowError
from pcamflow.experiment import record_trained_store
from pcamflow.io import now_iso, write_json
from pcamflow.slurm import allocation, slurm_job
from pcamflow.training.device import check_amp, resolve_device
from pcamflow.training.model_cost import model_cost
from pcamflow.training.run import build_run
from pcamflow.training.runconfig import make_run_config, validate_run_config
from pcamflow.training.step import train_step

log = logging.getLogger(__name__)

TRIAL_STEPS = 3  # training steps of the costliest point: enough to allocate everything a step needs
# tensors per parameter each optimizer keeps: at equal model and batch, Adam needs the most memory
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}


def partition_name() -> str:
    """The Slurm partition this job runs on, or `local` outside Slurm."""
    return os.environ.get("SLURM_JOB_PARTITION") or "local"


def costliest_point(points: list[dict], training: dict) -> dict:
    """The largest model (by compute per tile, as `pcamflow cost` counts it) at its largest batch
    size, with the optimizer that keeps the most state."""
    return max(
        points,
        key=lambda p: (
            model_cost(p["model"], training).macs,
            p["batch_size"],
            OPTIMIZER_STATES.get(p["optimizer"], 0),
        ),
    )


def job_memory_mb() -> int | None:
    """Host memory this Slurm job was given (MB), or None outside Slurm: SLURM_MEM_PER_NODE, else
    Slurm's record of the job (a job step, as Snakemake runs each job, may not see the variable)."""
    if os.environ.get("SLURM_MEM_PER_NODE"):
        return int(os.environ["SLURM_MEM_PER_NODE"])
    job = slurm_job()
    if job and "mem=" in job.get("TRES", ""):
        return round(allocation(job["TRES"])["mem_mb"])
    return None


def peak_host_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def check_device(training: dict) -> tuple[torch.device, dict]:
    device = resolve_device(training["device"])
    check_amp(training["amp"], device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    record = {
        "device": device.type,
        "name": provenance.device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "job_memory_mb": job_memory_mb(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            mig="MIG" in record["name"] or "MIG-" in (os.environ.get("CUDA_VISIBLE_DEVICES") or ""),
            memory_gib=round(props.total_memory / 2**30, 2),
            compute_capability=f"{props.major}.{props.minor}",
        )
        if training["amp"] == "bf16":
            record["bf16"] = torch.cuda.is_bf16_supported()
            if not record["bf16"]:
                raise PcamflowError(f"{record['name']} does not support bf16 (training.amp: bf16); use fp16")
    return device, record


TRAINING_SPLITS = ("train", "valid")


def check_store(store: Path) -> dict:
    """The prepared store read where every job reads it (the shared path), verified against its manifest."""
    try:  # every byte the training jobs read, checked against the manifest
        checksum = verify_store(store, TRAINING_SPLITS)
        tiles = {split: len(load_split(store, split, mmap=True)) for split in TRAINING_SPLITS}
    except (OSError, ValueError, PcamflowError) as err:  # unreadable, or not what prepare wrote
        raise PcamflowError(f"prepared store {store} not readable from this job: {err}") from None
    return {"path": str(store), "checksum": checksum, "tiles": tiles}


def check_scratch(store: Path) -> dict:
    """When the job asked for node-local scratch: $TMPDIR exists, is writable and holds the staged splits."""
    asked = staging.job_asks_for_scratch()
    if not asked:
        return {"asked": asked, "path": None}
    tmpdir, job = os.environ.get("TMPDIR") or "", os.environ.get("SLURM_JOB_ID", "")
    # Slurm makes a job's node-local scratch a directory named after the job (Snellius:
    # /scratch-node/<user>.<job>); a Snakemake job whose $TMPDIR is missing gets /tmp instead.
    if not Path(tmpdir).is_dir() or not re.search(rf"(^|\D){re.escape(job)}$", Path(tmpdir).name):
        raise PcamflowError(
            f"the job asked for node-local scratch (--constraint={staging.SCRATCH_FEATURE}) but "
            f"$TMPDIR ({tmpdir or 'unset'}) is not job {job}'s scratch directory on this node"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=tmpdir) as probe:
            probe.write(b"pcamflow preflight")
            probe.flush()
    except OSError as err:
        raise PcamflowError(f"node-local scratch $TMPDIR ({tmpdir}) is not writable: {err}") from None
    needed = sum(p.stat().st_size for p in store_files(store, staging.STAGED_SPLITS) if p.exists())
    free = os.statvfs(tmpdir).f_bavail * os.statvfs(tmpdir).f_frsize
    if needed > free:
        raise PcamflowError(
            f"node-local scratch $TMPDIR ({tmpdir}) has {free / 2**30:.1f} GiB free; "
            f"staging the store needs {needed / 2**30:.1f} GiB"
        )
    return {
        "asked": True,
        "path": tmpdir,
        "free_gib": round(free / 2**30, 2),
        "needed_gib": round(needed / 2**30, 3),
    }


def trial_steps(point: dict, seed: int, training: dict, store: Path, state_dir: Path, steps: int) -> dict:
    """A few real training steps of `point` and one validation batch; the peak memory they took."""
    cfg = validate_run_config(make_run_config(point, seed, training, store))
    torch.set_num_threads(cfg["training"]["threads"])
    run = build_run(cfg, state_dir)  # stages the store to node-local scratch, as a training job does
    what = f"{point['model']} at batch {point['batch_size']} (amp {training['amp']})"
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    started = time.perf_counter()
    try:
        for _, (x, y) in zip(range(steps), run.loader, strict=False):
            inputs = run.transform.to_input(x, train=True, generator=run.augment_rng)
            train_step(run.parts, inputs, y, measure_norm=False)
        eval_batch = min(training["eval_batch_size"], len(run.valid))
        transform = BatchTransform(
            run.stats,
            device=run.device,
            augment=False,
            channels_last=training["channels_last"],
            cpu_accelerator=run.settings["cpu_accelerator"],
        )
        with torch.no_grad():
            for _ in predict_logits(
                run.parts.model,
                run.valid.x[:eval_batch],
                transform,
                batch_size=eval_batch,
                amp=training["amp"],
            ):
                pass
        if cuda:
            torch.cuda.synchronize(run.device)
    except torch.cuda.OutOfMemoryError:
        total = torch.cuda.get_device_properties(run.device).total_memory / 2**30
        raise PcamflowError(
            f"{what} or validation at batch {training['eval_batch_size']} runs out of GPU memory on "
            f"{provenance.device_name(run.device)} ({total:.1f} GiB): lower the batch size"
        ) from None
    record = {
        "point": point,
        "steps": steps,
        "eval_batch_size": training["eval_batch_size"],
        "seconds": round(time.perf_counter() - started, 3),
        "peak_host_memory_mb": round(peak_host_memory_mb()),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(run.device) / 2**20) if cuda else None,
    }
    allowed = job_memory_mb()
    if allowed and record["peak_host_memory_mb"] > allowed:
        raise PcamflowError(
            f"{what} peaked at {record['peak_host_memory_mb']} MB of host memory, more than the "
            f"job's {allowed} MB: give training jobs more memory (site setting gpu_mem_mb) or lower the batch size"
        )
    return record


def run_preflight(
    points: list[dict],
    seed: int,
    training: dict,
    store: str | os.PathLike,
    out: str | os.PathLike,
    steps: int = TRIAL_STEPS,
    experiment_root: str | os.PathLike | None = None,
) -> dict:
    """Every check; writes `out` (JSON) when all pass. A failure raises one PcamflowError line naming
    the partition and the problem, and writes nothing. experiment_root: the results root whose runs
    the store is for (the workflow's); a store other than the one they were trained on is refused,
    the first one recorded (pcamflow.experiment)."""
    store, partition = Path(store), partition_name()
    point = costliest_point(points, training)
    try:
        _, device_record = check_device(training)
        store_record = check_store(store)
        if experiment_root is not None:
            record_trained_store(Path(experiment_root), store_record["checksum"])
        scratch_record = check_scratch(store)
        with tempfile.TemporaryDirectory(prefix="pcamflow-preflight-") as state_dir:
            trial = trial_steps(point, seed, training, store, Path(state_dir), steps)
    except PcamflowError as err:
        raise PcamflowError(f"preflight on {partition}: {err}") from None
    record = {
        "partition": partition,
        "host": socket.gethostname(),
        "slurm_job_id": provenance.slurm_job_id(),
        "time": now_iso(),
        "device": device_record,
        "store": store_record,
        "scratch": scratch_record,
        "trial": trial,
    }
    write_json(out, record)
    log.info(
        "preflight on %s passed: %s (%s), store %s readable, scratch %s, %s at batch %d: %d steps, "
        "peak host memory %d MB, peak GPU memory %s MB",
        partition,
        device_record["device"],
        device_record["name"],
        store,
        scratch_record["path"] or "not asked for",
        point["model"],
        point["batch_size"],
        steps,
        trial["peak_host_memory_mb"],
        trial["peak_gpu_memory_mb"],
    )
    return record
