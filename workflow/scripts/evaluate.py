from _adapter import run_stage

from mrisr.pipeline import evaluate

run_stage(
    snakemake,
    evaluate,
    subject=snakemake.wildcards.subject,
    hr_path=snakemake.input.hr,
    mask_path=snakemake.input.mask,
    # The main model's SR, the spline baseline, the predictor alone and one sample
    # (predict-and-refine: sr_predictor, sr_sample), each compared model's SR as sr_{name}.
    methods={"spline": snakemake.input.spline, "sr": snakemake.input.sr} | {
        key: path for key, path in snakemake.input.items() if key in ("sr_predictor", "sr_sample")
    } | {
        f"sr_{key.removeprefix('compare_')}": path
        for key, path in snakemake.input.items() if key.startswith("compare_")
    },
    out_path=snakemake.output.tsv,
    sd_path=snakemake.input.get("sd"),
    out_calibration=snakemake.output.get("calibration"),
)
