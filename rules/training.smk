# Stage rules: train (see rules/common.smk for path patterns). One job per (grid point, seed);
# its outputs are the run-directory files of pcamflow.rundir in RUN_DIR.
from pcamflow.data.store import store_files

RUN_LABELS = {"model": "{model}", "lr": "{lr}", "batch size": "{batch_size}", "optimizer": "{optimizer}"}
# the training settings as rule params (a change reruns the rule); device_resident only says where
# batches are gathered (the same values either way): the train script reads it from the config


rule train:
    input:
        # the splits training reads (as validate_run_config checks); the test split is not one
        store_files(PREPARED, ["train", "valid"]),
    output:
        history=run_path(rundir.HISTORY),
        metrics=report(
            run_path(rundir.METRICS),
            caption="../report/training_metrics.rst",
            category="training",
            subcategory="{model}",
            labels={**RUN_LABELS, "seed": "{seed}"},
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
    threads: config["training"]["threads"]
    resources:
        # the train and valid arrays are read into memory (memory-mapped when they would not fit)
        mem_mb=lambda wildcards, input: 2000 + int(2 * input_mb(input)),
        # which attempt this is (a resource, not a param: it must not make finished runs rerun)
        attempt=lambda wildcards, attempt: attempt,
        attempts=train_attempts,
    params:
        point=grid_point,
        seed=lambda wildcards: int(wildcards.seed),
        # operational keys (log_every, threads, ...) are read by the script: changing one reruns nothing
        training=RESULT_TRAINING,
        # from the input, not PREPARED: Snakemake's lint wants path params derived from the files
        data=lambda wildcards, input: str(Path(input[0]).parent),
        # resume checkpoints live outside the outputs, so a failed job's cleanup keeps them
        state_dir=STATE_DIR,
        # TensorBoard scalars while it trains: `tensorboard --logdir results/tensorboard` shows the sweep live
        live_dir=TENSORBOARD_LIVE,
    script:
        "../workflow_scripts/train.py"


TARGETS.extend(all_run_files(rundir.HISTORY))
