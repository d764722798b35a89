from _adapter import run_stage

run_stage(
    snakemake,
    "fetch_demo",
    subject=snakemake.wildcards.subject,
    seed=snakemake.params.seed,
    voxel_size_mm=snakemake.params.voxel_size_mm,
    out_t1=snakemake.output.t1,
    out_mask=snakemake.output.mask,
)
