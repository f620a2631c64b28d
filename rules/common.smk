# Shared helpers: config validation, every path pattern (written once, here), input functions.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

import pandas as pd
from snakemake.utils import Paramspace

from pcamflow import constants
from pcamflow.config import grid_points, validate_config
from pcamflow.errors import PcamflowError

try:
    config = validate_config(config)
    GRID = pd.DataFrame(grid_points(config))
except PcamflowError as err:
    raise WorkflowError(str(err)) from None

SPLITS = list(constants.SPLITS)
# one directory level per grid key: results/runs/model~cnn/lr~0.001/batch_size~64/optimizer~adam/seed~42
PARAMSPACE = Paramspace(GRID, param_sep="~")
# grid point path -> typed values, built once: a dict lookup per job keeps planning a large sweep fast
_POINTS = {PARAMSPACE.wildcard_pattern.format(**p): p for p in grid_points(config)}


def grid_point(wildcards):
    """The typed grid values (model, lr, ...) of a job's wildcards."""
    return _POINTS[PARAMSPACE.wildcard_pattern.format(**{k: getattr(wildcards, k) for k in GRID.columns})]


wildcard_constraints:
    split="|".join(SPLITS),
    kind="x|y",
    seed=r"-?\d+",
    model=r"[a-z][a-z0-9]*",
    lr=r"[0-9.eE+-]+",
    batch_size=r"\d+",
    optimizer=r"[a-z]+",
    partition=r"[A-Za-z0-9_]+",


# ---- path patterns: every output path in the workflow is built from these ----
RESULTS = Path("results")
LOGS = RESULTS / "logs"
BENCHMARKS = RESULTS / "benchmarks"
SYNTH_DIR = RESULTS / "data" / "synthetic"
RAW_DIR = Path(config["data_dir"]) if config["dataset"] == "pcam" else SYNTH_DIR
RAW_H5 = str(RAW_DIR / constants.FILE_PATTERN)  # wildcards: split, kind
RAW_META = str(RAW_DIR / constants.META_PATTERN)  # wildcards: split
SYNTH_RECORD = SYNTH_DIR / constants.PLANTED_FILE
AUDIT_DIR = RESULTS / "audit"
AUDIT_JSON = str(AUDIT_DIR / constants.AUDIT_FILE)
AUDIT_PLOT = str(AUDIT_DIR / "{split}.png")
AUDIT_HASHES = str(AUDIT_DIR / "{split}_hashes.npy")
AUDIT_CROSS = AUDIT_DIR / constants.CROSS_SPLIT_FILE
PREPARED = RESULTS / "prepared"
GRID_POINT = PARAMSPACE.wildcard_pattern  # model~{model}/lr~{lr}/...
RUN_DIR = str(RESULTS / "runs" / GRID_POINT / "seed~{seed}")
# Resume state lives outside every declared output, so a failed job's cleanup keeps it.
STATE_DIR = str(RESULTS / "state" / GRID_POINT / "seed~{seed}")
RUN_FILES = ("history.json", "metrics.csv", "run.json", "checkpoint_best.pt", "checkpoint_last.pt")
# the preflight of the training jobs (rules/train.smk): what the node they get can do
PREFLIGHT_NAME = "train"
PREFLIGHT = str(RESULTS / "preflight" / f"{PREFLIGHT_NAME}.json")
SUMMARY = RESULTS / "summary"
# sweep aggregation, champion, evaluation, slices, reproducibility (rules/aggregate.smk, rules/evaluate.smk)
RUNS_CSV = SUMMARY / "runs.csv"
METRICS_AVG = SUMMARY / "metrics_avg.csv"
METRICS_AVG_HTML = SUMMARY / "metrics_avg.html"
CHAMPION_JSON = SUMMARY / "champion.json"
PARALLEL_PLOT = SUMMARY / "parallel_coordinates.png"
EPOCH_CURVES = str(SUMMARY / "curves" / GRID_POINT / "epochs.png")
STEP_CURVES = str(SUMMARY / "curves" / GRID_POINT / "steps.png")
SWEEP_TENSORBOARD = SUMMARY / "tensorboard"
EVALUATION = RESULTS / "evaluation"
PREDICTIONS = EVALUATION / "predictions.npz"
EVALUATE_JSON = SUMMARY / "evaluate.json"
EVALUATE_CSV = SUMMARY / "evaluate.csv"
EVALUATE_HTML = SUMMARY / "evaluate.html"
CONFUSION_PLOT = EVALUATION / "confusion.png"
ROC_PR_PLOT = EVALUATION / "roc_pr.png"
SLICES_CSV = SUMMARY / "slices.csv"
SLICES_HTML = SUMMARY / "slices.html"
GALLERY_FN = EVALUATION / "false_negatives.png"
GALLERY_FP = EVALUATION / "false_positives.png"
REPRO_JSON = SUMMARY / "reproducibility.json"
REPRO_HTML = SUMMARY / "reproducibility.html"
REPRO_RUN = RESULTS / "reproducibility" / "twin"
REPRO_STATE = RESULTS / "state" / "reproducibility"
# the champion's model bundle and the offline handover tarball (rules/export.smk)
BUNDLE_DIR = RESULTS / "bundle" / "model"
BUNDLE_TAR = RESULTS / "bundle.tar.gz"
CONDA_ENV = "../envs/pcamflow.yaml"  # relative to rules/, for `--sdm conda`
THROUGHPUT_CSV = str(RESULTS / "throughput" / "{partition}.csv")
THROUGHPUT_SUMMARY = SUMMARY / "throughput.csv"
THROUGHPUT_PLOT = SUMMARY / "throughput_scaling.png"
# what the run cost, per rule (rules/cost.smk)
COST_CSV = SUMMARY / "cost.csv"
COST_HTML = SUMMARY / "cost.html"


def input_mb(input):
    """Size of a job's existing input files in MB (plain stat calls: `input.size_mb` is async in
    Snakemake 9 and warns when evaluated outside a job, e.g. by --report)."""
    return sum(os.path.getsize(f) for f in input if os.path.exists(f)) / 2**20


def raw_files(split):
    return [RAW_H5.format(split=split, kind=k) for k in ("x", "y")]


def run_file(name, **wildcards):
    return str(Path(RUN_DIR) / name).format(**wildcards)


def all_runs():
    """One entry per (grid point, seed): the wildcards of a training run."""
    return [dict(point, seed=seed) for point in GRID.to_dict("records") for seed in config["seeds"]]


def all_run_files(name):
    return [run_file(name, **run) for run in all_runs()]


# Each stage appends its final outputs here (rules/*.smk), and `rule all` asks for them.
TARGETS = []


def all_targets():
    return TARGETS
