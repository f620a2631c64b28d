"""Rule overview: the report's first-page table and the lines a finished run prints (pcamflow.evaluation.overview),
with the partitions the throughput study skipped."""

import pandas as pd

from pcamflow.evaluation.overview import write_overview
from pcamflow.smk import run_script
from pcamflow.throughput.summary import skipped_partitions


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
        prepared_stats=smk.input.prepared,
        skipped=skipped_partitions(pd.read_csv(smk.input.throughput)),
    )


run_script(snakemake, main)
