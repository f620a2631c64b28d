# Data stage: download + verify real PCAM (dataset pcam). One job per raw file, so Snakemake plans
# only the files data_dir lacks; files already there (course copies too) are used as they are.

if config["dataset"] == "pcam":

    # The login node has the internet access; the job is light (network and one gunzip stream).
    localrules:
        download,

    rule download:
        # `run:` rather than `script:` on purpose: Snakemake reruns a `script:` rule whose outputs are
        # older than its script, which would download again over PCAM copies already on disk.
        output:
            RAW_H5,
        log:
            LOGS / "download" / "{split}_{kind}.log",
        benchmark:
            BENCHMARKS / "download" / "{split}_{kind}.tsv"
        run:
            from pcamflow.data.download import rule_main

            rule_main(config, output[0], log[0], wildcards.split, wildcards.kind)
