"""Rule prepare: raw PCAM files + audits -> the clean uint8 store (see pcamflow.data.store)."""

from pcamflow.data.prepare import prepare_store
from pcamflow.io import read_json
from pcamflow.smk import run_script


def main(smk):
    splits = smk.params.splits
    raw = {split: (smk.input.x[i], smk.input.y[i]) for i, split in enumerate(splits)}
    audits = {split: read_json(path) for split, path in zip(splits, smk.input.audits)}
    prepare_store(
        raw,
        smk.params.out_dir,
        audits=audits,
        cross=read_json(smk.input.cross),
        block_size=smk.config["audit"]["block_size"],  # not a param: memory only, no rerun (rules/data.smk)
        **smk.params.settings,
    )


run_script(snakemake, main)
