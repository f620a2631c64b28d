"""Rule audit_cross: duplicate tiles across splits, from the per-split hashes and audits."""

from pcamflow.data.audit import audit_cross
from pcamflow.smk import run_script


def main(smk):
    splits = smk.params.splits
    audit_cross(dict(zip(splits, smk.input.hashes)), dict(zip(splits, smk.input.audits)), smk.output[0])


run_script(snakemake, main)
