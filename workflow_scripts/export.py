"""Rule export: the champion's model bundle (pcamflow.deployment.export)."""

import sys
from pathlib import Path

from pcamflow.deployment.export import MANIFEST_FILE, bundle_sha256, export_champion
from pcamflow.smk import run_script


def main(smk):
    out_dir = Path(smk.output.card).parent
    export_champion(
        smk.input.champion,
        smk.input.evaluation,
        smk.input.slices,
        smk.params.store,
        out_dir,
        dataset=smk.params.dataset,
        tta=smk.params.tta,
        drift=smk.params.drift,
    )
    # on the terminal, not only in the log: the fingerprint to publish beside the bundle
    print(f"bundle {out_dir}: sha256 {bundle_sha256(out_dir)} (of its {MANIFEST_FILE})", file=sys.__stderr__)


run_script(snakemake, main)
