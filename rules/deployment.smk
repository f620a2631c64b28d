# Export stage: the champion's model bundle (deployed checkpoint, validation threshold, drift
# reference, model card, checksums) and the offline handover tarball.
# Library: pcamflow.deployment.export (bundle, rule export), .model_card (MODEL_CARD.md),
# .handover (rule handover); text from src/pcamflow/deployment/templates/. Path patterns: rules/common.smk.
from pcamflow.deployment.bundle_files import BUNDLE_FILES, CARD_FILE


rule export:
    input:
        champion=CHAMPION_JSON,
        evaluation=EVALUATE_JSON,
        slices=SLICES_CSV,
        # the deployed checkpoint is one of these (named in champion.json)
        checkpoints=all_run_files(rundir.BEST_CHECKPOINT),
        run_records=all_run_files(rundir.RUN_INFO),
        store=store_input(["train"]),
    output:
        files=[BUNDLE_DIR / name for name in BUNDLE_FILES if name != CARD_FILE],
        card=report(
            BUNDLE_DIR / CARD_FILE,
            caption="../report/export_card.rst",
            category=CATEGORY["evaluation"],
            subcategory="model bundle",
        ),
    log:
        LOGS / "export.log",
    benchmark:
        BENCHMARKS / "export.tsv"
    conda:
        CONDA_ENV
    params:
        store=STORE,
        dataset=config["dataset"],
        tta=config["evaluate"]["tta"],
        drift=config["export"]["drift"],
    script:
        "../workflow_scripts/export.py"


rule handover:
    input:
        bundle=[BUNDLE_DIR / name for name in BUNDLE_FILES],
        champion=CHAMPION_JSON,
    output:
        HANDOVER_TAR,
    log:
        LOGS / "handover.log",
    conda:
        CONDA_ENV
    params:
        bundle_dir=BUNDLE_DIR,
    script:
        "../workflow_scripts/handover.py"


TARGETS.extend([*(BUNDLE_DIR / name for name in BUNDLE_FILES), HANDOVER_TAR])
