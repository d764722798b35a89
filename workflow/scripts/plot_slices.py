from _adapter import run_stage

from mrisr.pipeline import plot_slices

run_stage(
    snakemake,
    plot_slices,
    subject=snakemake.wildcards.subject,
    lr_path=snakemake.input.lr[0],
    spline_path=snakemake.input.spline,
    sr_path=snakemake.input.sr,
    hr_path=snakemake.input.hr,
    mask_path=snakemake.input.mask,
    out_panels=snakemake.output.panels,
    out_sweep=snakemake.output.sweep,
)
