from _adapter import run_stage

from mrisr.pipeline import calibrate_sd

run_stage(snakemake, calibrate_sd, sd_path=snakemake.input.sd, calibration_path=snakemake.input.calibration,
          out_path=snakemake.output.sd)
