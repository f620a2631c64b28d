# Evaluation stage: the champion on test once (predictions made once per checkpoint, then reused),
# slices and error galleries, and the reproducibility check (the deployed run trained a second time).
# Library: pcamflow.evaluation.evaluate, pcamflow.evaluation.slices, pcamflow.evaluation.reproducibility. Path patterns: rules/common.smk.
from pcamflow.data.store import array_path

REPRO_ORIGINAL = config["reproducibility"]["run"].rstrip("/")
if REPRO_ORIGINAL and str(Path(REPRO_ORIGINAL).parent) not in {
    str(layout.root_entry(RESULTS, "runs", rundir.point_id(point, GRID_KEYS))) for point in POINTS
}:
    raise WorkflowError(
        f"config key 'reproducibility.run': {REPRO_ORIGINAL} is not a run of a grid point of this config"
    )
# The test split's meta CSV (scanning centre) when the data has one: synthetic always, PCAM if present.
TEST_META = RAW_META.format(split="test")


rule predict_champion:
    input:
        champion=CHAMPION_JSON,
        # the champion is one of the grid points: every best checkpoint is a dependency
        checkpoints=all_run_files(rundir.BEST_CHECKPOINT),
        store=store_input(["valid", "test"]),
    output:
        PREDICTIONS,
    log:
        LOGS / "predict_champion.log",
    benchmark:
        BENCHMARKS / "predict_champion.tsv"
    conda:
        CONDA_ENV
    threads: config["training"]["threads"]
    params:
        store=STORE,
        tta=config["evaluate"]["tta"],  # training.eval_batch_size and .device: read by the script (operational)
    script:
        "../workflow_scripts/predict_champion.py"


rule evaluate:
    input:
        predictions=PREDICTIONS,
        champion=CHAMPION_JSON,
        train_labels=ancient(array_path(STORE, "train", "y")),  # as store_input
    output:
        json=report(
            EVALUATE_JSON,
            caption="../report/evaluate.rst",
            category=CATEGORY["evaluation"],
            subcategory="metrics",
        ),
        csv=report(
            EVALUATE_CSV,
            caption="../report/evaluate.rst",
            category=CATEGORY["evaluation"],
            subcategory="metrics",
        ),
        html=report(
            EVALUATE_HTML,
            caption="../report/evaluate.rst",
            category=CATEGORY["evaluation"],
            subcategory="metrics",
        ),
        confusion=report(
            CONFUSION_PLOT,
            caption="../report/confusion.rst",
            category=CATEGORY["evaluation"],
            subcategory="figures",
        ),
        curves=report(
            ROC_PR_PLOT,
            caption="../report/roc_pr.rst",
            category=CATEGORY["evaluation"],
            subcategory="figures",
        ),
    log:
        LOGS / "evaluate.log",
    conda:
        CONDA_ENV
    params:
        settings=config["evaluate"],
    script:
        "../workflow_scripts/evaluate.py"


rule slices:
    input:
        predictions=PREDICTIONS,
        evaluation=EVALUATE_JSON,
        store=store_input(["test"]),
        audit=AUDIT_JSON.format(split="test"),
        cross=AUDIT_CROSS,
        meta=lambda wc: [TEST_META] if config["dataset"] == "synthetic" or Path(TEST_META).exists() else [],
    output:
        csv=report(
            SLICES_CSV,
            caption="../report/slices.rst",
            category=CATEGORY["slices"],
            subcategory="metrics",
        ),
        html=report(
            SLICES_HTML,
            caption="../report/slices.rst",
            category=CATEGORY["slices"],
            subcategory="metrics",
        ),
        histogram=report(
            SLICES_HISTOGRAM,
            caption="../report/slices_histogram.rst",
            category=CATEGORY["slices"],
            subcategory="metrics",
        ),
        false_negatives=report(
            GALLERY_FN,
            caption="../report/gallery_fn.rst",
            category=CATEGORY["slices"],
            subcategory="errors",
        ),
        false_positives=report(
            GALLERY_FP,
            caption="../report/gallery_fp.rst",
            category=CATEGORY["slices"],
            subcategory="errors",
        ),
    log:
        LOGS / "slices.log",
    benchmark:
        BENCHMARKS / "slices.tsv"
    conda:
        CONDA_ENV
    params:
        store=STORE,
        settings=config["slices"],
    script:
        "../workflow_scripts/slices.py"


rule reproducibility:
    input:
        # the run to repeat: reproducibility.run (its twin can train beside the sweep), else the
        # deployed champion run named in champion.json (known once the sweep is done)
        run=[f"{REPRO_ORIGINAL}/{name}" for name in rundir.RUN_FILES] if REPRO_ORIGINAL else [CHAMPION_JSON],
        store=store_input(["train", "valid"]),
    output:
        json=report(
            REPRO_JSON,
            caption="../report/reproducibility.rst",
            category=CATEGORY["training"],
            subcategory="reproducibility",
        ),
        html=report(
            REPRO_HTML,
            caption="../report/reproducibility.rst",
            category=CATEGORY["training"],
            subcategory="reproducibility",
        ),
        twin=directory(REPRO_RUN),
    log:
        LOGS / "reproducibility.log",
    benchmark:
        BENCHMARKS / "reproducibility.tsv"
    conda:
        CONDA_ENV
    threads: config["training"]["threads"]
    params:
        state=REPRO_STATE,
        run=REPRO_ORIGINAL,
    script:
        "../workflow_scripts/reproducibility.py"


TARGETS.extend([EVALUATE_JSON, EVALUATE_CSV, EVALUATE_HTML, CONFUSION_PLOT, ROC_PR_PLOT])
TARGETS.extend([SLICES_CSV, SLICES_HTML, SLICES_HISTOGRAM, GALLERY_FN, GALLERY_FP])
if config["reproducibility"]["enabled"]:
    TARGETS.extend([REPRO_JSON, REPRO_HTML])
