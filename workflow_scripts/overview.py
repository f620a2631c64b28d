"""Rule overview: the report's first-page table and the lines a finished run prints (pcamflow.evaluation.overview)."""

from pcamflow.evaluation.overview import write_overview
from pcamflow.smk import run_script


def main(smk):
    out = {name: smk.output[name] for name in ("rst", "html", "txt")}
    audits = dict(zip(smk.params.splits, smk.input.audits))
    write_overview(
        smk.input.champion,
        smk.input.evaluation,
        smk.input.runs,
        audits,
        smk.input.cross,
        smk.input.failed,
        out,
    )


run_script(snakemake, main)
