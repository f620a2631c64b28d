"""Rule reproducibility: train a run again with its own config and seed (default: the champion), compare."""

from pcamflow.evaluation.reproducibility import write_reproducibility
from pcamflow.smk import run_script


def main(smk):
    champion = "" if smk.params.run else smk.input.run[0]
    write_reproducibility(
        champion, smk.output.json, smk.output.html, smk.output.twin, smk.params.state, smk.params.run
    )


run_script(snakemake, main)
