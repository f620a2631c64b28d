"""Rule predict_champion: every champion checkpoint's P(positive) on valid and test, made once and reused."""

from pcamflow.evaluation.evaluate import write_champion_predictions
from pcamflow.smk import run_script


def main(smk):
    import torch

    torch.set_num_threads(smk.threads)
    write_champion_predictions(
        smk.input.champion,
        smk.params.store,
        smk.output[0],
        tta=smk.params.tta,
        batch_size=smk.params.batch_size,
        device=smk.params.device,
    )


run_script(snakemake, main)
