from _adapter import run_stage

from mrisr.derivatives import apply_mask

run_stage(
    snakemake,
    apply_mask,
    raw_t1=snakemake.input.t1,
    raw_mask=snakemake.input.get("mask"),  # absent when the source ships none: estimated
    out_mask=snakemake.output.mask,
    sources=list(snakemake.params.sources),
)
