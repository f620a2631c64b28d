"""Rule reproducibility: train the deployed champion run again (same config and seed) and compare."""

from pcamflow.repro import write_reproducibility
from pcamflow.smk import run_script


def main(smk):
    write_reproducibility(
        smk.input.champion, smk.output.json, smk.output.html, smk.output.twin, smk.params.state
    )


run_script(snakemake, main)
