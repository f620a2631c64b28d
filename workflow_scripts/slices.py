"""Rule slices: per-slice metrics of the deployed champion on test, and its error galleries."""

from pcamflow.evaluation.slices import write_slices
from pcamflow.smk import run_script


def main(smk):
    out = {
        name: smk.output[name] for name in ("csv", "html", "histogram", "false_negatives", "false_positives")
    }
    meta = smk.input.meta[0] if smk.input.meta else None
    write_slices(
        smk.input.predictions,
        smk.input.evaluation,
        smk.params.store,
        smk.input.audit,
        smk.input.cross,
        meta,
        smk.params.settings,
        out,
    )


run_script(snakemake, main)
