"""Rule handover: results/handover.tar.gz for an offline handover (pcamflow.deployment.export.write_handover)."""

from pathlib import Path

from pcamflow.deployment.export import write_handover
from pcamflow.io import read_json
from pcamflow.smk import run_script


def main(smk):
    deployed_run = Path(read_json(smk.input.champion)["deploy"]["run_dir"])
    write_handover(smk.output[0], smk.params.bundle_dir, dict(smk.params.config), deployed_run / "run.json")


run_script(snakemake, main)
