"""Rule cost: per rule, what the run really cost -> results/summary/cost.{csv,html}."""

import numpy as np

from pcamflow.data.store import array_path
from pcamflow.io import write_csv
from pcamflow.plots import html_table
from pcamflow.smk import run_script
from pcamflow.throughput.cost import estimate
from pcamflow.throughput.usage import run_usage


def main(smk):
    train_tiles = len(np.load(array_path(smk.params.store, "train", "y"), mmap_mode="r"))
    lines = estimate(smk.config, train_tiles)  # `pcamflow cost` for this config and these tiles
    table = run_usage(".", smk.params.logs, smk.params.benchmarks, smk.params.rules, lines)
    write_csv(smk.output.csv, table.round(6))
    source = (
        "Slurm accounting (sacct)" if (table["source"] == "sacct").any() else "the rules' benchmark files"
    )
    html_table(
        table.round(3),
        "What the run cost, per rule",
        smk.output.html,
        notes=[
            f"From {source}; estimate: pcamflow cost for this config at {train_tiles:,} training tiles.",
            "SBU as Snellius charges: per GPU-hour on GPU partitions, else per core-hour (at least "
            "1/8 node); ratio = actual / estimate. Failed attempts and retries are counted.",
        ],
    )


run_script(snakemake, main)
