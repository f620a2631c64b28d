# pcamflow: the table of contents. Logic lives in src/pcamflow; rules in rules/*.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/download.smk"
include: "rules/training.smk"
include: "rules/aggregate.smk"
include: "rules/evaluation.smk"
include: "rules/deployment.smk"
include: "rules/throughput.smk"
include: "rules/overview.smk"
include: "rules/cost.smk"


rule all:
    default_target: True
    input:
        all_targets(),
