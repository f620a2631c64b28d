"""Rule export: the champion's model bundle (pcamflow.deployment.export)."""

from pathlib import Path

from pcamflow.deployment.export import export_champion
from pcamflow.smk import run_script


def main(smk):
    export_champion(
        smk.input.champion,
        smk.input.evaluation,
        smk.input.slices,
        smk.params.store,
        Path(smk.output.card).parent,
        dataset=smk.params.dataset,
        tta=smk.params.tta,
        drift=smk.params.drift,
    )


run_script(snakemake, main)
