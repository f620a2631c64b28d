"""Rule sweep_tensorboard: one TensorBoard log directory with the HParams of every run of the sweep."""

from pathlib import Path

from pcamflow.evaluation.aggregate import write_sweep_tensorboard
from pcamflow.smk import run_script


def main(smk):
    run_dirs = [Path(h).parent for h in smk.input.histories]
    write_sweep_tensorboard(smk.params.runs, run_dirs, smk.params.grid_keys, smk.output[0])


run_script(snakemake, main)
