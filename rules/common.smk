# Shared helpers: config validation, every path pattern (written once, here), input functions.
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
# envs/pcamflow.yaml installs pcamflow from here (`-e ${PCAMFLOW_ROOT}`) for `--sdm conda` jobs
os.environ.update(PCAMFLOW_ROOT=workflow.basedir)

from pcamflow import constants, layout, rundir
from pcamflow.controller import record_controller
from pcamflow.config import GRID_KEYS, grid_points, layered_config, load_yaml, result_settings
from pcamflow.errors import PcamflowError
from pcamflow.data.store import check_store_before_jobs, read_manifest, store_files, store_is_complete
from pcamflow.experiment import check_experiment, record_experiment, record_trained_store
from pcamflow.terminal import quiet_terminal
from pcamflow.training.attempt import ATTEMPTS_ENV

# one line per finished job on the terminal (the log under .snakemake/log/ keeps everything)
quiet_terminal(workflow)


def config_layers():
    """(the Snakefile's own config file, unless --replace-workflow-config; what the command line
    gave: each --configfile, each --config KEY=VALUE), as (name, mapping) layers."""
    given = [Path(f) for f in workflow.overwrite_configfiles]
    own = [] if workflow.config_settings.replace_workflow_config else workflow.configfiles
    own = [Path(f) for f in own if Path(f).absolute() not in {g.absolute() for g in given}]
    shown = lambda f: str(f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f)
    overrides = [(f"--config {key}", {key: value}) for key, value in workflow.config_settings.config.items()]
    return (
        [(shown(f.absolute()), load_yaml(f)) for f in own],
        [(shown(f.absolute()), load_yaml(f)) for f in given] + overrides,
    )


try:
    # Snakemake's own merge adds a --configfile's `partitions:` to the Snakefile's; the config is
    # layered once more as pcamflow.config.layered_config says (as for `pcamflow status`), and
    # validated: --config values arrive as text inside lists and mappings, the schema gives types
    config = layered_config(*config_layers())
    # the experiment's results root: results/ (default) or results/<experiment>/
    RESULTS = layout.results_root(config["experiment"])
    if workflow.is_main_process:  # not again inside each job
        # refused before any job when RESULTS holds another experiment's results (pcamflow.experiment)
        check_experiment(config, RESULTS)
except PcamflowError as err:
    raise WorkflowError(str(err)) from None


onstart:
    # beside Snakemake's locks: which process holds them, so `pcamflow status` tells stale ones
    record_controller()
    # the first run that starts jobs records what this experiment's results are made with, and the
    # store they are trained on once there is one (the preflight records it when prepare just made it)
    record_experiment(config, RESULTS)
    if store_is_complete(STORE, SPLITS):
        record_trained_store(RESULTS, read_manifest(STORE)[1])


SPLITS = list(constants.SPLITS)
# one directory level per grid key: results/runs/model~cnn/lr~0.001/batch_size~64/optimizer~adam/seed~42
POINTS = grid_points(config)
# Settings a rule's params may hold: operational keys (schema.yaml `operational: true`, such as
# training.log_every) are read by the scripts from snakemake.config, so changing one reruns nothing.
RESULT_TRAINING = result_settings(config, "training")
# grid point path -> typed values, built once: a dict lookup per job keeps planning a large sweep fast
_POINTS = {rundir.point_id(p, GRID_KEYS): p for p in POINTS}


def grid_point(wildcards):
    """The typed grid values (model, lr, ...) of a job's wildcards."""
    return _POINTS[rundir.point_id(wildcards, GRID_KEYS)]


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
# RESULTS: the experiment's results root (above, from pcamflow.layout); its top-level entries are
# pcamflow.layout's ROOT_ENTRIES, the names an experiment may not take
EXPERIMENT_RECORD = layout.root_entry(RESULTS, layout.EXPERIMENT_FILE)
LOGS = layout.root_entry(RESULTS, "logs")
BENCHMARKS = layout.root_entry(RESULTS, "benchmarks")
SYNTH_DIR = layout.root_entry(RESULTS, "data", "synthetic")
RAW_DIR = Path(config["data_dir"]) if config["dataset"] == "pcam" else SYNTH_DIR
RAW_H5 = str(RAW_DIR / constants.FILE_PATTERN)  # wildcards: split, kind
RAW_META = str(RAW_DIR / constants.META_PATTERN)  # wildcards: split
SYNTH_RECORD = SYNTH_DIR / constants.PLANTED_FILE
AUDIT_DIR = layout.root_entry(RESULTS, "audit")
AUDIT_JSON = str(AUDIT_DIR / constants.AUDIT_FILE)
AUDIT_PLOT = str(AUDIT_DIR / "{split}.png")
AUDIT_HASHES = str(AUDIT_DIR / "{split}_hashes.npy")
AUDIT_CROSS = AUDIT_DIR / constants.CROSS_SPLIT_FILE
STORE = layout.root_entry(RESULTS, "prepared")
GRID_POINT = rundir.point_pattern(GRID_KEYS)  # model~{model}/lr~{lr}/...
# report labels of a grid point's outputs: its grid values, read from the wildcards
GRID_LABELS = {key: f"{{{key}}}" for key in GRID_KEYS}
RUN_DIR = layout.run_dir_pattern(RESULTS, GRID_KEYS)
# Resume state lives outside every declared output, so a failed job's cleanup keeps it.
STATE_DIR = layout.state_dir_pattern(RESULTS, GRID_KEYS)
TRAIN_LOG = layout.train_log_pattern(RESULTS, GRID_KEYS)
# live TensorBoard scalars of each run while it trains (kept across attempts; outside the outputs)
TENSORBOARD_LIVE = str(layout.root_entry(RESULTS, "tensorboard", GRID_POINT, rundir.seed_dir("{seed}")))
# the preflight of the training jobs (rules/training.smk): what the node they get can do
PREFLIGHT_NAME = "train"
PREFLIGHT = str(layout.root_entry(RESULTS, "preflight", f"{PREFLIGHT_NAME}.json"))
SUMMARY = layout.root_entry(RESULTS, "summary")
# sweep aggregation, champion, evaluation, slices, reproducibility (rules/aggregate.smk, rules/evaluation.smk)
RUNS_CSV = SUMMARY / "runs.csv"
METRICS_AVG = SUMMARY / "metrics_avg.csv"
METRICS_AVG_HTML = SUMMARY / "metrics_avg.html"
FAILED_RUNS = SUMMARY / "failed_runs.txt"
CHAMPION_JSON = SUMMARY / "champion.json"
PARALLEL_PLOT = SUMMARY / "parallel_coordinates.png"
EPOCH_CURVES = str(SUMMARY / "curves" / GRID_POINT / "epochs.png")
STEP_CURVES = str(SUMMARY / "curves" / GRID_POINT / "steps.png")
SWEEP_TENSORBOARD = SUMMARY / "tensorboard"
EVALUATION = layout.root_entry(RESULTS, "evaluation")
PREDICTIONS = EVALUATION / "predictions.npz"
EVALUATE_JSON = SUMMARY / "evaluate.json"
EVALUATE_CSV = SUMMARY / "evaluate.csv"
EVALUATE_HTML = SUMMARY / "evaluate.html"
CONFUSION_PLOT = EVALUATION / "confusion.png"
ROC_PR_PLOT = EVALUATION / "roc_pr.png"
SLICES_CSV = SUMMARY / "slices.csv"
SLICES_HTML = SUMMARY / "slices.html"
SLICES_HISTOGRAM = EVALUATION / "intensity_histogram.png"
GALLERY_FN = EVALUATION / "false_negatives.png"
GALLERY_FP = EVALUATION / "false_positives.png"
REPRO_JSON = SUMMARY / "reproducibility.json"
REPRO_HTML = SUMMARY / "reproducibility.html"
REPRO_RUN = layout.root_entry(RESULTS, "reproducibility", "twin")
REPRO_STATE = layout.root_entry(RESULTS, "state", "reproducibility")
# the champion's model bundle and the offline handover tarball (rules/deployment.smk)
BUNDLE_DIR = layout.root_entry(RESULTS, "bundle", "model")
HANDOVER_TAR = layout.root_entry(RESULTS, "handover.tar.gz")
# the answer first: the report's first page (report/workflow.rst includes the .rst) and the last lines
OVERVIEW_RST = SUMMARY / "overview.rst"
OVERVIEW_HTML = SUMMARY / "overview.html"
OVERVIEW_TXT = SUMMARY / "overview.txt"
CONDA_ENV = "../envs/pcamflow.yaml"  # relative to rules/, for `--sdm conda`
THROUGHPUT_CSV = str(layout.root_entry(RESULTS, "throughput", "{partition}.csv"))
THROUGHPUT_SUMMARY = SUMMARY / "throughput.csv"
THROUGHPUT_PLOT = SUMMARY / "throughput_scaling.png"
# what the run cost, per rule (rules/cost.smk)
COST_CSV = SUMMARY / "cost.csv"
COST_HTML = SUMMARY / "cost.html"


def input_mb(input):
    """Size of a job's existing input files in MB (plain stat calls: `input.size_mb` is async in
    Snakemake 9 and warns when evaluated outside a job, e.g. by --report)."""
    return sum(os.path.getsize(f) for f in input if os.path.exists(f)) / 2**20


def train_attempts(wildcards):
    """How many attempts a training job gets (Snakemake's retries + 1): on its last one a run that
    fails is recorded as failed and the sweep goes on. Jobs that Snakemake starts in another process
    (a Slurm job) are told `--retries 0`, so the controller hands its count on in the environment
    (sbatch exports it)."""
    if workflow.remote_exec or workflow.subprocess_exec:
        return int(os.environ.get(ATTEMPTS_ENV, "1"))
    settings = workflow.execution_settings  # None when nothing runs (--report, --summary)
    attempts = (settings.retries if settings is not None else 0) + 1
    os.environ[ATTEMPTS_ENV] = str(attempts)
    return attempts


def store_input(splits):
    """The store files a job reads, as `ancient` inputs: a store written again (its mtime) makes
    Snakemake rerun nothing, so a finished run is kept unless what it was trained on changed. That is
    checked instead: each job verifies what it reads against the manifest, and before any job
    check_store (below) refuses a damaged store, or one other than the experiment's runs were trained on."""
    return [ancient(path) for path in store_files(STORE, splits)]


def check_store(wildcards):
    """An input function of the prepare step that adds no input. Snakemake calls it as it plans the
    jobs, in the controller, before any job that reads the store; --forcerun and --until are known by
    then, unlike while the Snakefile is read. Refuses with one line (pcamflow.data.store)."""
    if workflow.is_main_process:
        check_store_once()
        refuse_forceall_over_finished_runs()
    return []


@functools.cache
def refuse_forceall_over_finished_runs():
    """-F (--forceall) reruns every job it plans: each finished run's files would be deleted and the
    run trained again. A rerun of one step names its rule (--forcerun); a fresh start is a new
    experiment name, which leaves the finished runs where they are."""
    if not workflow.dag_settings.forceall:
        return
    finished = [path for path in all_run_files(rundir.HISTORY) if os.path.exists(path)]
    if finished:
        refuse(
            f"-F/--forceall would delete and train again the {len(finished)} finished runs in "
            f"{RESULTS}/; rerun a step by naming its rule (--forcerun RULE), or start afresh under "
            "another experiment name (--config experiment=NAME)"
        )


@functools.cache
def check_store_once():
    settings = workflow.dag_settings
    try:
        check_store_before_jobs(
            STORE,
            SPLITS,
            RESULTS,
            rebuilt=settings.forceall or "prepare" in settings.forcerun,
            rebuild_only="prepare" in settings.until,
        )
    except PcamflowError as err:
        refuse(err)


def refuse(err):
    """Stop with one line while Snakemake plans the jobs (raised as an error, an input function's
    error would come wrapped in Snakemake's InputFunctionException, traceback and all)."""
    print(f"pcamflow: error: {err}", file=sys.stderr)
    raise SystemExit(1)


# Rules with wildcards whose jobs wait on the preflight. `--until` one of them would stop right after
# the checkpoint with exit 0 having run none of them: once Snakemake updates the jobs that wait on a
# checkpoint, an --until job of a rule with wildcards keeps no reason to run (Snakemake issue 2824;
# an --until rule without wildcards, e.g. aggregate, is run with all it needs).
UNTIL_STOPS_AT_PREFLIGHT = ("train", "plot_grid_point")


def wait_for_preflight():
    """[] once the preflight passed (IncompleteCheckpointException until then), refusing first, in
    one line, an --until that would stop at the preflight. A dry run (-n) records nothing, so there
    the preflight's file is a plain input: the same jobs, planned once instead of again for every
    waiting run once the checkpoint "passed" (about a third of planning a sweep of thousands)."""
    stuck = [name for name in UNTIL_STOPS_AT_PREFLIGHT if name in workflow.dag_settings.until]
    if stuck and workflow.is_main_process:
        refuse(
            f"--until {stuck[0]}: Snakemake would stop after the preflight checkpoint without running a "
            f"{stuck[0]} job (they wait on it; Snakemake issue 2824), having trained nothing; use "
            "--until aggregate (every run and the runs table) or name the runs' files as targets"
        )
    if workflow.dryrun:
        return [PREFLIGHT]
    checkpoints.preflight.get()  # raises IncompleteCheckpointException until the preflight passed
    return []  # the preflight's file is no input: a new one never reruns a finished run


def raw_files(split):
    return [RAW_H5.format(split=split, kind=k) for k in ("x", "y")]


def run_path(name):
    """The pattern of one file of a run directory (wildcards: grid keys, seed)."""
    return str(Path(RUN_DIR) / name)


def run_file(name, **wildcards):
    return run_path(name).format(**wildcards)


def all_runs():
    """One entry per (grid point, seed): the wildcards of a training run."""
    return [dict(point, seed=seed) for point in POINTS for seed in config["seeds"]]


def all_run_files(name):
    pattern = run_path(name)  # once, not once per run: thousands of runs call this several times
    return [pattern.format(**run) for run in all_runs()]


# The report's categories in the order of the journey; the report's sidebar sorts them by name,
# so each is numbered: `category=CATEGORY["data"]` is "2 data".
REPORT_CATEGORIES = ("overview", "data", "training", "sweep", "evaluation", "slices", "throughput", "cost")
CATEGORY = {name: f"{i} {name}" for i, name in enumerate(REPORT_CATEGORIES, 1)}


# Each stage appends its final outputs here (rules/*.smk), and `rule all` asks for them.
TARGETS = []


def all_targets():
    return TARGETS
