from _adapter import run_stage

from mrisr.pipeline import fit_sd_calibration

run_stage(
    snakemake,
    fit_sd_calibration,
    subjects=list(snakemake.params.subjects),
    paths={kind: list(getattr(snakemake.input, kind)) for kind in ("hr", "mask", "sr", "sd")},
    method=snakemake.params.method,
    sampling=snakemake.params.sampling,
    out_path=snakemake.output.json,
    checkpoints=list(snakemake.input.checkpoints),
)
