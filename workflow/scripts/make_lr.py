from _adapter import run_stage

from mrisr.pipeline import make_lr

run_stage(
    snakemake,
    make_lr,
    hr_path=snakemake.input.hr,
    out_path=snakemake.output.lr,
    factor=int(snakemake.wildcards.factor),
    order=snakemake.params.order,
    method=snakemake.params.method,
    raw_t1=snakemake.input.get("raw"),  # the acquisition protocol's whole-head volume; absent: masked protocol
    percentile=snakemake.params.percentile,
    normalise=snakemake.params.normalise,
)
