from pathlib import Path

from _adapter import run_stage

from mrisr.derivatives import plot_scan

run_stage(
    snakemake,
    plot_scan,
    scan_path=snakemake.input.scan,
    sr_path=snakemake.input.sr,
    sd_path=snakemake.input.get("sd"),
    title=Path(snakemake.wildcards.scan).name,
    out_panels=snakemake.output.panels,
    out_thumb=snakemake.output.thumb,
)
