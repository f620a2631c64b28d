"""Rule throughput_summary: merged throughput CSV with a bottleneck column, and the scaling plot."""

from pcamflow.smk import run_script
from pcamflow.throughput.summary import summarise_throughput


def main(smk):
    summarise_throughput(smk.input, smk.output.csv, smk.output.plot)


run_script(snakemake, main)
