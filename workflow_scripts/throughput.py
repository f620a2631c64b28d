"""Rule throughput: one partition's throughput matrix -> results/throughput/{partition}.csv."""

from pcamflow.data.staging import stage_prepared
from pcamflow.smk import run_script
from pcamflow.throughput.measure import write_partition_csv


def main(smk):
    write_partition_csv(
        smk.wildcards.partition,
        smk.params.partition,
        smk.params.settings,
        smk.output[0],
        store=str(stage_prepared(smk.params.store)),  # node-local copy inside a Slurm job
        raw_x=smk.input.raw[0] if smk.input.raw else "",  # present when the course loader is timed
        training=smk.params.training,
        threads=smk.threads,  # what Snakemake granted (capped by --cores)
    )


run_script(snakemake, main)
