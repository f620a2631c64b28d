# Stage rules: train (see rules/common.smk for path patterns). One job per (grid point, seed);
# its outputs are the run-directory files of pcamflow.rundir in RUN_DIR.
from datetime import datetime

# What a training job asks for; the preflight asks for exactly the same (profiles give both one share).
TRAIN_THREADS = config["training"]["threads"]
# a run's history.json: it exists once the run finished (its input function asks for each job)
RUN_HISTORY = run_path(rundir.HISTORY)


# the train and valid arrays are read into memory (memory-mapped when they would not fit)
TRAIN_MEM_MB = lambda wildcards, input: 2000 + int(2 * input_mb(input))


# A checkpoint: a training run still to do is planned only once the preflight passed, without the
# preflight's file among its inputs, so a new preflight never makes Snakemake retrain a finished run.
checkpoint preflight:
    input:
        store_input(["train", "valid"]),
    output:
        PREFLIGHT,
    log:
        str(LOGS / "preflight" / f"{PREFLIGHT_NAME}.log"),
    benchmark:
        str(BENCHMARKS / "preflight" / f"{PREFLIGHT_NAME}.tsv")
    conda:
        CONDA_ENV
    threads: TRAIN_THREADS
    resources:
        mem_mb=TRAIN_MEM_MB,
    params:
        points=grid_points(config),
        seed=config["seeds"][0],
        training=config["training"],
        store=lambda wildcards, input: str(Path(input[0]).parent),
        # the store must be the one the experiment's runs were trained on (recorded there when first)
        experiment_record=EXPERIMENT_RECORD,
        # A preflight checks the node as it is now: a new value per invocation makes it run again
        # in every invocation that has training left to do (and only then: nothing else needs it).
        invocation=datetime.now().isoformat(timespec="seconds"),
    script:
        "../workflow_scripts/preflight.py"


rule train:
    input:
        # the splits training reads (as validate_run_config checks); the test split is not one
        store_input(["train", "valid"]),
        # a run still to do waits for the preflight; a finished one (its history exists) does not
        preflight=lambda wildcards: (
            [] if os.path.exists(RUN_HISTORY.format(**wildcards)) else wait_for_preflight()
        ),
    output:
        history=RUN_HISTORY,
        metrics=report(
            run_path(rundir.METRICS),
            caption="../report/training_metrics.rst",
            category=CATEGORY["training"],
            subcategory="{model}",
            labels={**GRID_LABELS, "seed": "{seed}"},
        ),
        run=run_path(rundir.RUN_INFO),
        best=run_path(rundir.BEST_CHECKPOINT),
        last=run_path(rundir.LAST_CHECKPOINT),
        tensorboard=directory(run_path(rundir.TENSORBOARD)),
    log:
        TRAIN_LOG,
    benchmark:
        str(BENCHMARKS / "train" / GRID_POINT / (rundir.seed_dir("{seed}") + ".tsv"))
    conda:
        CONDA_ENV
    threads: TRAIN_THREADS
    resources:
        mem_mb=TRAIN_MEM_MB,
        # which attempt this is (a resource, not a param: it must not make finished runs rerun)
        attempt=lambda wildcards, attempt: attempt,
        attempts=train_attempts,
    params:
        point=grid_point,
        seed=lambda wildcards: int(wildcards.seed),
        # operational keys (log_every, threads, ...) are read by the script: changing one reruns nothing
        training=RESULT_TRAINING,
        # from the input, not STORE: Snakemake's lint wants path params derived from the files
        store=lambda wildcards, input: str(Path(input[0]).parent),
        # resume checkpoints live outside the outputs, so a failed job's cleanup keeps them
        state_dir=STATE_DIR,
        # TensorBoard scalars while it trains: `tensorboard --logdir results/tensorboard` shows the sweep live
        live_dir=TENSORBOARD_LIVE,
    script:
        "../workflow_scripts/train.py"


# No run's history is a target of its own: aggregate reads every one, and its outputs are targets.
# Listing them again in `all` (and in `cost`, which waits for every target) cost planning two file
# lookups per run: about 5% of the work of planning a sweep of 1,000 runs.
