# Data stage: download + verify real PCAM (dataset pcam). One job per raw file, so Snakemake plans
# only the files data_dir lacks; files already there (course copies too) are used as they are.
#
# Only files missing when the workflow starts are outputs of `download`: a raw file that was there
# is an input of the workflow, never an output, so no Snakemake command (-F, --forcerun download,
# --delete-all-output) deletes or overwrites it. A file downloaded once is such an input next time.

if config["dataset"] == "pcam":

    import re

    # file name -> (split, kind) of each raw file missing from data_dir now
    MISSING_RAW = {
        Path(RAW_H5.format(split=s, kind=k)).name: (s, k)
        for s in SPLITS
        for k in ("x", "y")
        if not os.path.exists(RAW_H5.format(split=s, kind=k))
    }

    # The login node has the internet access; the job is light (network and one gunzip stream).
    localrules:
        download,

    rule download:
        # `run:` rather than `script:` on purpose: Snakemake reruns a `script:` rule whose outputs are
        # older than its script, which would download again over PCAM copies already on disk.
        output:
            str(RAW_DIR / "{raw_file}"),
        log:
            LOGS / "download" / "{raw_file}.log",
        benchmark:
            BENCHMARKS / "download" / "{raw_file}.tsv"
        wildcard_constraints:
            # "(?!)" matches nothing: with every file present, the rule produces none
            raw_file="|".join(map(re.escape, MISSING_RAW)) or "(?!)",
        run:
            from pcamflow.data.download import rule_main

            split, kind = MISSING_RAW[wildcards.raw_file]
            rule_main(config, output[0], log[0], split, kind)
