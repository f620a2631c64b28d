# Throughput stage: `pcamflow throughput` over partitions x models x batch sizes x precisions x modes.
# One job per partition loops its whole matrix (a sane number of Slurm jobs) and gets that
# partition's Slurm resources and CPUs; locally those CPUs (capped by --cores) usually are all
# cores, so no other job runs beside a measurement. Library: pcamflow.throughput.measure, pcamflow.throughput.summary.


rule throughput:
    input:
        store=store_input(["train"]),
        # the course's loader (modes course and reopen) reads the raw train file
        raw=(raw_files("train") if {"course", "reopen"} & set(config["throughput"]["modes"]) else []),
    output:
        THROUGHPUT_CSV,
    log:
        LOGS / "throughput" / "{partition}.log",
    benchmark:
        BENCHMARKS / "throughput" / "{partition}.tsv"
    conda:
        CONDA_ENV
    threads: lambda wildcards: config["partitions"][wildcards.partition]["cpus"]
    resources:
        slurm_partition=lambda wildcards: wildcards.partition,
        cpus_per_task=lambda wildcards: config["partitions"][wildcards.partition]["cpus"],
        gpu=lambda wildcards: config["partitions"][wildcards.partition]["gpus"],
        # the store's train split is held in memory (memory-mapped when it would not fit); the
        # course's loader reads the raw file one tile at a time, so that file does not count
        mem_mb=lambda wildcards, input: 3000 + int(1.2 * input_mb(input.store)),
    params:
        partition=lambda wildcards: config["partitions"][wildcards.partition],
        settings=config["throughput"],
        training=RESULT_TRAINING,
        store=STORE,
    script:
        "../workflow_scripts/throughput.py"


rule throughput_summary:
    input:
        expand(THROUGHPUT_CSV, partition=config["partitions"]),
    output:
        csv=report(THROUGHPUT_SUMMARY, caption="../report/throughput.rst", category=CATEGORY["throughput"]),
        plot=report(
            THROUGHPUT_PLOT, caption="../report/throughput_scaling.rst", category=CATEGORY["throughput"]
        ),
    log:
        LOGS / "throughput_summary.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/throughput_summary.py"


TARGETS.extend([THROUGHPUT_SUMMARY, THROUGHPUT_PLOT])
