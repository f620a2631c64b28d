"""Rule plot_grid_point: training curves (mean and std over seeds) and per-step plots of one grid point."""

from pathlib import Path

from pcamflow.evaluation.aggregate import plot_grid_point
from pcamflow.smk import run_script


def main(smk):
    point = {key: smk.wildcards[key] for key in smk.params.grid_keys}
    run_dirs = [Path(h).parent for h in smk.input.histories]
    plot_grid_point(
        point, smk.params.seeds, run_dirs, smk.output.epochs, smk.output.steps, smk.params.grid_keys
    )


run_script(snakemake, main)
