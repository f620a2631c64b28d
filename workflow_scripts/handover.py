"""Rule handover: results/handover.tar.gz for an offline handover (pcamflow.deployment.handover)."""

from pathlib import Path

from pcamflow.deployment.handover import write_handover
from pcamflow.io import read_json
from pcamflow.rundir import RUN_INFO
from pcamflow.smk import run_script


def main(smk):
    deployed_run = Path(read_json(smk.input.champion)["deploy"]["run_dir"])
    # the resolved config from snakemake.config, not a param: an operational key's change reruns nothing
    config = dict(smk.config)
    write_handover(smk.output[0], smk.params.bundle_dir, config, deployed_run / RUN_INFO)


run_script(snakemake, main)
