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
        # operational keys, not params: changing one reruns nothing
        batch_size=smk.config["training"]["eval_batch_size"],
        device=smk.config["training"]["device"],
        cpu_accelerator=smk.config["training"]["cpu_accelerator"],
    )


run_script(snakemake, main)
