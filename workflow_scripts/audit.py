"""Rule audit: one split of the raw PCAM files -> audit JSON, plot and per-tile hashes."""

from pcamflow.data.audit import audit_split, write_audit
from pcamflow.smk import run_script


def main(smk):
    block_size = smk.config["audit"]["block_size"]  # not a param: memory only, no rerun (rules/data.smk)
    result = audit_split(
        smk.input.x,
        smk.input.y,
        split=smk.wildcards.split,
        block_size=block_size,
        threads=smk.threads,
        **smk.params.thresholds,
    )
    write_audit(result, smk.output.json, smk.output.plot, smk.output.hashes)


run_script(snakemake, main)
