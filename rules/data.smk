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
        params:
            settings=config["synthetic"],
        script:
            "../workflow_scripts/synthesize.py"
