from _adapter import run_stage

from mrisr.pipeline import scale_sd

run_stage(snakemake, scale_sd, sd_path=snakemake.input.sd, scale_path=snakemake.input.scale, out_path=snakemake.output.sd)
