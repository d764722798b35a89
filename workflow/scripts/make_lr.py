from _adapter import run_stage

from mrisr.data.degrade import SliceProfile, parse_factor_label
from mrisr.data.protocol import Acquisition
from mrisr.pipeline import make_lr

params = snakemake.params

run_stage(
    snakemake,
    make_lr,
    hr_path=snakemake.input.hr,
    out_path=snakemake.output.lr,
    acquisition=Acquisition(parse_factor_label(snakemake.wildcards.factor), params.order, params.method,
                            params.normalise, SliceProfile(params.slice_profile, params.slice_gap)),
    raw_t1=snakemake.input.get("raw"),  # the acquisition protocol's whole-head volume; absent: masked protocol
    percentile=params.percentile,
)
