from _adapter import run_stage

from mrisr.pipeline import baseline

run_stage(
    snakemake,
    baseline,
    lr_path=snakemake.input.lr[0],
    factor=snakemake.params.factor,
    order=snakemake.params.order,
    out_path=snakemake.output.spline,
)
