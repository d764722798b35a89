from pathlib import Path

from _adapter import run_stage

from mrisr.pipeline import cache_stage

run_stage(
    snakemake,
    cache_stage,
    hr_path=snakemake.input.hr,
    lr_path=snakemake.input.lr[0],
    mask_path=snakemake.input.mask,
    factors=snakemake.params.factors,
    stage=snakemake.params.stage,
    order=snakemake.params.order,
    method=snakemake.params.method,
    out_dir=str(Path(snakemake.output.info).parent),
)
