# Sweep stage: runs table, mean and std over seeds, the champion (validation only), plots, HParams.
# Library: pcamflow.evaluation.aggregate, pcamflow.plots. Path patterns: rules/common.smk.


rule aggregate:
    input:
        histories=all_run_files(rundir.HISTORY),
        run_records=all_run_files(rundir.RUN_INFO),
    output:
        runs=report(
            RUNS_CSV,
            caption="../report/runs.rst",
            category=CATEGORY["sweep"],
            subcategory="tables",
        ),
        avg=report(
            METRICS_AVG,
            caption="../report/metrics_avg.rst",
            category=CATEGORY["sweep"],
            subcategory="tables",
        ),
        avg_html=report(
            METRICS_AVG_HTML,
            caption="../report/metrics_avg.rst",
            category=CATEGORY["sweep"],
            subcategory="tables",
        ),
        # `snakemake --forcerun $(cat results/summary/failed_runs.txt)` retrains only the failed runs
        failed=FAILED_RUNS,
    log:
        LOGS / "aggregate.log",
    conda:
        CONDA_ENV
    params:
        runs=all_runs(),
        grid_keys=GRID_KEYS,
    script:
        "../workflow_scripts/aggregate.py"


rule champion:
    input:
        runs=RUNS_CSV,
        avg=METRICS_AVG,
    output:
        champion=report(
            CHAMPION_JSON,
            caption="../report/champion.rst",
            category=CATEGORY["sweep"],
            subcategory="champion",
        ),
        parallel=report(
            PARALLEL_PLOT,
            caption="../report/parallel_coordinates.rst",
            category=CATEGORY["sweep"],
            subcategory="champion",
        ),
    log:
        LOGS / "champion.log",
    conda:
        CONDA_ENV
    params:
        grid_keys=GRID_KEYS,
        metric=config["champion"]["metric"],
        # grid points with fewer successful seeds do not compete (default: every seed of the config)
        min_seeds=config["champion"]["min_seeds"] or len(config["seeds"]),
        training=RESULT_TRAINING,  # model sizes, for the parameter counts of ties
    script:
        "../workflow_scripts/champion.py"


rule plot_grid_point:
    input:
        # history.json of every seed of this grid point (the wildcards hold its grid values)
        histories=lambda wc: [
            run_file(rundir.HISTORY, **{k: wc[k] for k in GRID_KEYS}, seed=seed) for seed in config["seeds"]
        ],
    output:
        epochs=report(
            EPOCH_CURVES,
            caption="../report/epoch_curves.rst",
            category=CATEGORY["training"],
            subcategory="curves per epoch",
            labels=GRID_LABELS,
        ),
        steps=report(
            STEP_CURVES,
            caption="../report/step_curves.rst",
            category=CATEGORY["training"],
            subcategory="curves per step",
            labels=GRID_LABELS,
        ),
    log:
        LOGS / "plot_grid_point" / f"{GRID_POINT}.log",
    conda:
        CONDA_ENV
    params:
        grid_keys=GRID_KEYS,
        seeds=config["seeds"],
    script:
        "../workflow_scripts/plot_grid_point.py"


rule sweep_tensorboard:
    input:
        histories=all_run_files(rundir.HISTORY),
    output:
        directory(SWEEP_TENSORBOARD),
    log:
        LOGS / "sweep_tensorboard.log",
    conda:
        CONDA_ENV
    params:
        runs=all_runs(),
        grid_keys=GRID_KEYS,
    script:
        "../workflow_scripts/sweep_tensorboard.py"


TARGETS.extend([RUNS_CSV, METRICS_AVG, METRICS_AVG_HTML, CHAMPION_JSON, PARALLEL_PLOT, SWEEP_TENSORBOARD])
TARGETS.extend(pattern.format(**point) for point in POINTS for pattern in (EPOCH_CURVES, STEP_CURVES))
