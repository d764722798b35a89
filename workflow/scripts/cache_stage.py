from pathlib import Path

from _adapter import run_stage

from mrisr.data.degrade import Degradation, SliceProfile
from mrisr.pipeline import cache_stage

params = snakemake.params

run_stage(
    snakemake,
    cache_stage,
    hr_path=snakemake.input.hr,
    lr_path=snakemake.input.lr[0],
    mask_path=snakemake.input.mask,
    factors=snakemake.params.factors,
    stage=snakemake.params.stage,
    out_dir=str(Path(snakemake.output.info).parent),
    degradation=Degradation(params.order, params.method, SliceProfile(params.slice_profile, params.slice_gap)),
)
