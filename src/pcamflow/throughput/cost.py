"""What a config costs on Snellius before anyone runs it: runs, GPU-hours and SBU.

A time model, not a measurement. A training step takes a fixed overhead plus, per image, the
compute time of the model (its multiply-accumulates, counted on the model pcamflow builds, at
an achieved A100 rate from NVIDIA's published ResNet-50 figures) and the time to gather and
copy its tile. Every number below is an assumption with its source; once the throughput study
(rule throughput) has measured img/s on gpu_a100, compare and revise them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pcamflow import constants
from pcamflow.config import WORKFLOW_CONFIG, grid_points, load_workflow_config
from pcamflow.errors import PcamflowError
from pcamflow.training.model_cost import model_cost

# ---- Snellius accounting (SURF's published rates) ----
SBU_PER_GPU_HOUR = 128  # gpu_a100: the smallest job, 1/4 node (1 A100 + 18 cores + 120 GiB), per hour
SBU_PER_CORE_HOUR = 1  # rome: per core-hour
ROME_MIN_CORES = 16  # rome: the smallest job is 1/8 node, charged as 16 cores whatever it asks
A100_MEMORY_GB = 40  # Snellius' gpu_a100 nodes hold A100-SXM4-40GB cards

# ---- A100 speed ----
# NVIDIA DeepLearningExamples, PyTorch ResNet-50 v1.5, training on 1x A100 80GB (pytorch-21.03 NGC):
# 2,470 img/s mixed precision and 938 img/s TF32 at 224 px; 4.1 G multiply-accumulates per image
# forward, so 3 x 2 x 4.1 G = 24.6 GFLOP per trained image (forward + backward).
RESNET50_TRAIN_FLOP = 24.6e9
A100_TRAIN_FLOPS = {"fp32": 938 * RESNET50_TRAIN_FLOP, "bf16": 2470 * RESNET50_TRAIN_FLOP}
A100_TRAIN_FLOPS["fp16"] = A100_TRAIN_FLOPS["bf16"]  # same tensor-core rate on an A100
# Our loop is plain eager PyTorch with deterministic cuDNN, gradient norms and logging, not NVIDIA's
# tuned recipe: assume 80 % of their rate.
GPU_EFFICIENCY = 0.8
# Small models (the MLP, the CNN) are bound by memory traffic, not FLOPs: at most this many img/s
# of pure compute (assumption; 1.5 TB/s of HBM over a few MB of activations per tile).
GPU_MAX_IMG_PER_S = 100_000

# ---- rome speed (AMD EPYC 7H12, 2.6 GHz, AVX2: 83 GFLOP/s fp32 peak per core) ----
# Assume 36 % of peak for convolution training; Zen 2 has no bf16 instructions (emulated: half the
# rate) and fp16 is not run on CPUs at all.
ROME_CORE_FLOPS = {"fp32": 30e9, "bf16": 15e9}
CPU_MAX_IMG_PER_S_PER_CORE = 2_000

# ---- the rest of a step and of a job (assumptions) ----
STEP_OVERHEAD_S = 0.003  # Python, kernel launches and the optimizer, per training step
EVAL_STEP_OVERHEAD_S = 0.001  # per validation/prediction batch
DATA_IMG_PER_S = 150_000  # gathering uint8 tiles (27.6 kB each) from host memory and copying them to the GPU
# the course's loader, per DataLoader worker: one h5py read and PIL conversion per tile (course:
# files kept open; reopen: both files reopened per tile, about three times slower)
BASELINE_IMG_PER_S_PER_WORKER = {"course": 4_500, "reopen": 1_500}
BENCH_SETUP_S = 2.0  # building the model, cuDNN autotuning, per benchmarked configuration
JOB_OVERHEAD_H = 3 / 60  # per GPU job: start-up, copying the store to node-local scratch, checkpoints
AUDIT_TILES_PER_S = 1_000  # audit and prepare on rome: reading, scanning and hashing each tile
SUMMARY_JOBS = 10  # aggregate, champion, evaluate, slices, reports...: short rome jobs
SUMMARY_JOB_H = 5 / 60
PLOTS_PER_JOB = 16  # the profile groups per-grid-point plots 16 to a job


def precision(training: dict) -> str:
    return {"none": "fp32"}.get(training["amp"], training["amp"])


# ---- time per step ----


def compute_img_per_s(
    macs: float, prec: str, device: str, cpus: int = 1, forward_only: bool = False
) -> float:
    """Images per second of pure compute (no overheads) on one A100 or on `cpus` rome cores."""
    flop_per_image = 2 * macs * (1 if forward_only else 3)
    speedup = 3 if forward_only else 1  # the rate caps are for training steps
    if device == "cuda":
        return min(GPU_EFFICIENCY * A100_TRAIN_FLOPS[prec] / flop_per_image, speedup * GPU_MAX_IMG_PER_S)
    return min(cpus * ROME_CORE_FLOPS[prec] / flop_per_image, speedup * cpus * CPU_MAX_IMG_PER_S_PER_CORE)


def step_seconds(
    macs: float, batch: int, prec: str, device: str = "cuda", cpus: int = 1, train: bool = True
) -> float:
    """Seconds of one training step (or, train=False, one forward batch)."""
    overhead = STEP_OVERHEAD_S if train else EVAL_STEP_OVERHEAD_S
    per_image = 1 / compute_img_per_s(macs, prec, device, cpus, forward_only=not train) + 1 / DATA_IMG_PER_S
    return overhead + batch * per_image


def run_hours(point: dict, training: dict, train_tiles: int) -> float:
    """Hours of one training run (grid point x seed) on one A100, job overhead included."""
    macs, prec, epochs = model_cost(point["model"], training).macs, precision(training), training["epochs"]
    train_s = math.ceil(train_tiles / point["batch_size"]) * step_seconds(macs, point["batch_size"], prec)
    eval_batch = training["eval_batch_size"]
    valid_s = math.ceil(constants.FULL_SIZES["valid"] / eval_batch) * step_seconds(
        macs, eval_batch, prec, train=False
    )
    return epochs * (train_s + valid_s) / 3600 + JOB_OVERHEAD_H


def activation_gb(point: dict, training: dict) -> float:
    """A rough upper bound of a training step's activation memory (every layer output kept)."""
    bytes_per_value = 2 if precision(training) in ("bf16", "fp16") else 4
    return model_cost(point["model"], training).activations * point["batch_size"] * bytes_per_value / 1e9


# ---- the whole config ----


@dataclass
class Line:
    """One row of the estimate."""

    item: str
    jobs: int
    hours_per_job: float
    partition: str  # gpu_a100 or rome
    cores: int = 0  # rome only: cores a job asks for
    rules: tuple[str, ...] = ()  # the workflow rules whose jobs the line counts (empty: the summaries)

    @property
    def hours(self) -> float:
        return self.jobs * self.hours_per_job

    @property
    def gpu_hours(self) -> float:
        return self.hours if self.partition == "gpu_a100" else 0.0

    @property
    def sbu(self) -> float:
        return job_sbu(self.cores, 1 if self.partition == "gpu_a100" else 0, self.hours)


def sbu_cores(cores: int) -> int:
    """Cores a rome job is charged for: what it asks, but at least 1/8 node."""
    return max(cores, ROME_MIN_CORES)


def estimate(cfg: dict, train_tiles: int = constants.FULL_SIZES["train"]) -> list[Line]:
    """Every cost line of a validated config."""
    training, seeds = cfg["training"], len(cfg["seeds"])
    points = grid_points(cfg)
    lines = []
    for model in dict.fromkeys(p["model"] for p in points):
        mine = [p for p in points if p["model"] == model]
        hours = sum(run_hours(p, training, train_tiles) for p in mine) / len(mine)
        lines.append(
            Line(
                f"train {model} ({len(mine)} points x {seeds} seeds)",
                len(mine) * seeds,
                hours,
                "gpu_a100",
                rules=("train",),
            )
        )
    if cfg["reproducibility"]["enabled"]:  # the champion once more; the costliest point bounds it
        lines.append(
            Line(
                "reproducibility twin (costliest point)",
                1,
                max(run_hours(p, training, train_tiles) for p in points),
                "gpu_a100",
                rules=("reproducibility",),
            )
        )
    lines.append(
        Line(
            "champion predictions (valid + test)",
            1,
            prediction_hours(points, cfg),
            "gpu_a100",
            rules=("predict_champion",),
        )
    )
    for name, part in cfg["partitions"].items():
        hours = benchmark_hours(cfg["throughput"], training, part, train_tiles)
        lines.append(
            Line(
                f"throughput matrix on {name}", 1, hours, _billing(part), part["cpus"], rules=("throughput",)
            )
        )
    tiles = train_tiles + constants.FULL_SIZES["valid"] + constants.FULL_SIZES["test"]
    lines.append(
        Line(
            "audit + prepare",
            2,
            tiles / AUDIT_TILES_PER_S / 3600,
            "rome",
            ROME_MIN_CORES,
            rules=("audit", "prepare"),  # one pass each over every tile
        )
    )
    plot_jobs = math.ceil(len(points) / PLOTS_PER_JOB)
    lines.append(
        Line("summaries, evaluation, plots", SUMMARY_JOBS + plot_jobs, SUMMARY_JOB_H, "rome", ROME_MIN_CORES)
    )
    return lines


def sbu_by_rule(lines: list[Line]) -> dict[str, float]:
    """Estimated SBU per workflow rule: a line counting several rules' jobs is shared equally
    between them; the summaries line (no rules) only counts in the total."""
    by_rule: dict[str, float] = {}
    for line in lines:
        for rule in line.rules:
            by_rule[rule] = by_rule.get(rule, 0.0) + line.sbu / len(line.rules)
    return by_rule


def job_sbu(cpus: int, gpus: int, hours: float) -> float:
    """SBU Snellius charges for one job: per GPU-hour on a GPU partition, else per core-hour
    (at least the smallest CPU job)."""
    if gpus:
        return gpus * hours * SBU_PER_GPU_HOUR
    return sbu_cores(cpus) * hours * SBU_PER_CORE_HOUR


def prediction_hours(points: list[dict], cfg: dict) -> float:
    """The champion's predictions on valid and test (8 D4 views with tta); the costliest model bounds it."""
    training = cfg["training"]
    views = 8 if cfg["evaluate"]["tta"] else 1
    tiles = views * (constants.FULL_SIZES["valid"] + constants.FULL_SIZES["test"])
    macs = max(model_cost(p["model"], training).macs for p in points)
    batch = training["eval_batch_size"]
    return (
        math.ceil(tiles / batch) * step_seconds(macs, batch, precision(training), train=False) / 3600
        + JOB_OVERHEAD_H
    )


def benchmark_hours(bench: dict, training: dict, partition: dict, train_tiles: int) -> float:
    """One partition's throughput matrix: warm-up and timed steps of every configuration."""
    device, cpus = partition["device"], partition["cpus"]

    def row(step: float) -> float:  # warm-up and timed steps, each at least min_seconds
        least = bench["min_seconds"]
        return BENCH_SETUP_S + max(bench["warmup"] * step, least) + max(bench["steps"] * step, least)

    seconds = 0.0
    for batch in bench["batch_sizes"]:
        if "data" in bench["modes"]:
            seconds += row(batch / DATA_IMG_PER_S)
        for mode, rate in BASELINE_IMG_PER_S_PER_WORKER.items():
            if mode in bench["modes"]:
                seconds += row(batch / (rate * max(1, bench["workers"])))
        for model in bench["models"]:
            macs = model_cost(model, training).macs
            for prec in bench["precisions"]:
                if device == "cpu" and prec == "fp16":
                    continue  # skipped on CPUs
                for mode in {"forward", "train"} & set(bench["modes"]):
                    seconds += row(step_seconds(macs, batch, prec, device, cpus, train=mode == "train"))
    return seconds / 3600 + JOB_OVERHEAD_H


def _billing(partition: dict) -> str:
    return "gpu_a100" if partition["device"] == "cuda" else "rome"


def memory_warnings(cfg: dict) -> list[str]:
    """Grid points whose activations may not fit on a 40 GB A100."""
    return [
        f"{p['model']} at batch {p['batch_size']} ({precision(cfg['training'])}): up to "
        f"{activation_gb(p, cfg['training']):.0f} GB of activations, may not fit in {A100_MEMORY_GB} GB"
        for p in grid_points(cfg)
        if activation_gb(p, cfg["training"]) > 0.8 * A100_MEMORY_GB
    ]


# ---- printing ----


def format_table(lines: list[Line]) -> str:
    header = f"{'item':<44} {'jobs':>5} {'h/job':>7} {'partition':<9} {'GPU-h':>8} {'SBU':>9}"
    rows = [header, "-" * len(header)]
    for line in lines:
        rows.append(
            f"{line.item:<44} {line.jobs:>5} {line.hours_per_job:>7.2f} {line.partition:<9} "
            f"{line.gpu_hours:>8.1f} {line.sbu:>9,.0f}"
        )
    rows.append("-" * len(header))
    total_gpu, total_sbu = sum(x.gpu_hours for x in lines), sum(x.sbu for x in lines)
    rows.append(
        f"{'total':<44} {sum(x.jobs for x in lines):>5} {'':>7} {'':<9} {total_gpu:>8.1f} {total_sbu:>9,.0f}"
    )
    return "\n".join(rows)


def assumptions(cfg: dict, train_tiles: int) -> str:
    training = cfg["training"]
    prec = precision(training)
    rates = ", ".join(
        f"{m} {1 / (step_seconds(model_cost(m, training).macs, 128, prec) / 128):,.0f}"
        for m in dict.fromkeys(p["model"] for p in grid_points(cfg))
    )
    return "\n".join(
        [
            f"Assumed: {train_tiles:,} train tiles, {training['epochs']} epochs, {prec} on one A100 share, "
            f"validation every epoch ({constants.FULL_SIZES['valid']:,} tiles).",
            f"Training img/s at batch 128 on an A100 ({prec}): {rates}.",
            f"From NVIDIA's ResNet-50 A100 training rate x {GPU_EFFICIENCY:.0%}, per-step overhead "
            f"{STEP_OVERHEAD_S * 1000:.0f} ms, {JOB_OVERHEAD_H * 60:.0f} min per GPU job (see pcamflow/throughput/cost.py).",
            f"SBU: {SBU_PER_GPU_HOUR} per A100-hour; rome {SBU_PER_CORE_HOUR} per core-hour, "
            f"at least {ROME_MIN_CORES} cores per job. The login-node download costs none.",
        ]
    )


def cli_main(args) -> int:
    """`pcamflow cost --config FILE`: the estimate as a table, then its assumptions. FILE is laid over
    config/config.yaml as `snakemake --configfile FILE` does, so the estimate is of what would run."""
    cfg = load_workflow_config([args.config], base=WORKFLOW_CONFIG)
    train_tiles = constants.FULL_SIZES["train"] if args.train_tiles is None else args.train_tiles
    if train_tiles < 1:
        raise PcamflowError(f"--train-tiles: must be a positive number of tiles, got {train_tiles}")
    print(format_table(estimate(cfg, train_tiles)))
    print()
    print(assumptions(cfg, train_tiles))
    for warning in memory_warnings(cfg):
        print(f"warning: {warning}")
    return 0
