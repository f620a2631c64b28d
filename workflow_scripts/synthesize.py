"""Rule synthesize: the embedded synthetic PCAM-format dataset."""

from pathlib import Path

from pcamflow.data.synthesize import write_synthetic
from pcamflow.smk import run_script


def main(smk):
    s = smk.params.settings
    write_synthetic(
        Path(smk.output.record).parent,
        n_train=s["n_train"],
        n_valid=s["n_valid"],
        n_test=s["n_test"],
        seed=s["seed"],
        poison=s["poison"],
        workers=smk.threads,
    )


if __name__ == "__main__":  # the generator's worker processes re-import this file
    run_script(snakemake, main)
