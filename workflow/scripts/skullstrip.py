from _adapter import run_stage

from mrisr.data.degrade import SliceProfile
from mrisr.data.protocol import Acquisition
from mrisr.pipeline import skullstrip

params = snakemake.params
run_stage(
    snakemake,
    skullstrip,
    raw_t1=snakemake.input.t1,
    raw_mask=snakemake.input.get("mask"),  # absent when the source ships none: estimated
    out_t1=snakemake.output.t1,
    out_mask=snakemake.output.mask,
    margin_mm=snakemake.params.margin_mm,
    multiple=snakemake.params.multiple,
    percentile=snakemake.params.percentile,
    acquisition=(Acquisition(params.multiple, params.order, params.method, params.normalise,
                             SliceProfile(params.slice_profile, params.slice_gap))
                 if params.protocol == "acquisition" else None),
)
