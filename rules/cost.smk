# What the run really cost, per rule (sacct on Slurm, benchmark files elsewhere), beside
# `pcamflow cost`'s estimate. Library: pcamflow.throughput.usage, pcamflow.throughput.cost. Included last: it waits for
# every other target, so every job of the run is counted.


# a few seconds of sacct on the login node: not worth a Slurm job (and not billed)
localrules:
    cost,


rule cost:
    input:
        lambda wildcards: [t for t in TARGETS if str(t) not in (str(COST_CSV), str(COST_HTML))],
    output:
        csv=report(COST_CSV, caption="../report/cost.rst", category=CATEGORY["cost"]),
        html=report(COST_HTML, caption="../report/cost.rst", category=CATEGORY["cost"]),
    log:
        LOGS / "cost.log",
    conda:
        CONDA_ENV
    params:
        rules=lambda wildcards: sorted(rule.name for rule in workflow.rules),
        store=STORE,
        logs=LOGS,
        benchmarks=BENCHMARKS,
    script:
        "../workflow_scripts/cost.py"


TARGETS.extend([COST_CSV, COST_HTML])
