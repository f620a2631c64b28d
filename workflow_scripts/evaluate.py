"""Rule evaluate: the champion on test with bootstrap intervals, a validation threshold, the baselines."""

from pcamflow.evaluation.evaluate import write_evaluation
from pcamflow.smk import run_script


def main(smk):
    out = {name: smk.output[name] for name in ("json", "csv", "html", "confusion", "curves")}
    write_evaluation(
        smk.input.predictions, smk.input.champion, smk.input.train_labels, smk.params.settings, out
    )


run_script(snakemake, main)
