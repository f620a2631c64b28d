# Data stage: synthesize (embedded default) | download (rules/download.smk) -> audit -> prepare.

if config["dataset"] == "synthetic":

    rule synthesize:
        output:
            h5=expand(RAW_H5, split=SPLITS, kind=["x", "y"]),
            meta=expand(RAW_META, split=SPLITS),
            record=SYNTH_RECORD,
        log:
            LOGS / "synthesize.log",
        benchmark:
            BENCHMARKS / "synthesize.tsv"
        conda:
            CONDA_ENV
        threads: 2  # blocks render in parallel; the files do not depend on the thread count
        params:
            settings=config["synthetic"],
        script:
            "../workflow_scripts/synthesize.py"


# ---- audit (per split, then across splits) and prepare: pcamflow.data.audit, pcamflow.data.prepare ----
from pcamflow.data.store import MANIFEST_FILE, store_files


rule audit:
    input:
        x=RAW_H5.replace("{kind}", "x"),
        y=RAW_H5.replace("{kind}", "y"),
    output:
        json=report(
            AUDIT_JSON,
            caption="../report/audit.rst",
            category=CATEGORY["data"],
            subcategory="audit",
        ),
        plot=report(
            AUDIT_PLOT,
            caption="../report/audit_plot.rst",
            category=CATEGORY["data"],
            subcategory="audit",
        ),
        hashes=AUDIT_HASHES,
    log:
        LOGS / "audit" / "{split}.log",
    benchmark:
        BENCHMARKS / "audit" / "{split}.tsv"
    conda:
        CONDA_ENV
    # tiles are checked in two threads for the training split, which holds 8x the tiles of the others,
    # while valid and test share the other cores; the audit does not depend on the thread count
    threads: lambda wildcards: 2 if wildcards.split == "train" else 1
    params:
        # what the audit's result depends on; audit.block_size (memory only) is read from the config
        # by the script, since a changed param would rerun every audit, prepare and training job
        thresholds={k: config["audit"][k] for k in ("black_max", "white_min")},
    script:
        "../workflow_scripts/audit.py"


rule audit_cross:
    input:
        hashes=expand(AUDIT_HASHES, split=SPLITS),
        audits=expand(AUDIT_JSON, split=SPLITS),
    output:
        report(
            AUDIT_CROSS,
            caption="../report/audit_cross.rst",
            category=CATEGORY["data"],
            subcategory="audit",
        ),
    log:
        LOGS / "audit" / "cross_split.log",
    conda:
        CONDA_ENV
    params:
        splits=SPLITS,
    script:
        "../workflow_scripts/audit_cross.py"


rule prepare:
    input:
        # adds no file: refuses a damaged store before any job reads it (rules/common.smk)
        check_store,
        x=expand(RAW_H5, split=SPLITS, kind="x"),
        y=expand(RAW_H5, split=SPLITS, kind="y"),
        audits=expand(AUDIT_JSON, split=SPLITS),
        cross=AUDIT_CROSS,
    output:
        store_files(STORE, SPLITS),
    log:
        LOGS / "prepare.log",
    benchmark:
        BENCHMARKS / "prepare.tsv"
    conda:
        CONDA_ENV
    params:
        splits=SPLITS,
        out_dir=lambda wildcards, output: Path(output[0]).parent,
        settings=config["prepare"],  # audit.block_size: read by the script (see rule audit)
    script:
        "../workflow_scripts/prepare.py"


TARGETS.extend(expand(AUDIT_JSON, split=SPLITS) + expand(AUDIT_PLOT, split=SPLITS))
TARGETS.extend([AUDIT_CROSS, STORE / MANIFEST_FILE])
