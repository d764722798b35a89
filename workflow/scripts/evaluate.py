from _adapter import run_stage

run_stage(
    snakemake,
    "evaluate",
    subject=snakemake.wildcards.subject,
    hr_path=snakemake.input.hr,
    mask_path=snakemake.input.mask,
    methods={"spline": snakemake.input.spline, "sr": snakemake.input.sr},
    out_path=snakemake.output.tsv,
    sd_path=snakemake.input.get("sd"),
    out_calibration=snakemake.output.get("calibration"),
)
