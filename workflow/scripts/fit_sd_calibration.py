from _adapter import run_stage

from mrisr.pipeline import fit_sd_calibration

run_stage(
    snakemake,
    fit_sd_calibration,
    subjects=list(snakemake.params.subjects),
    hr_paths=list(snakemake.input.hr),
    mask_paths=list(snakemake.input.mask),
    sr_paths=list(snakemake.input.sr),
    sd_paths=list(snakemake.input.sd),
    method=snakemake.params.method,
    sampling=snakemake.params.sampling,
    out_path=snakemake.output.json,
    checkpoints=list(snakemake.input.checkpoints),
)
