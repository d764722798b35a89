from pathlib import Path

from _adapter import run_stage


def by_subject(paths):
    """results/<kind>/<subject>/<file> -> {subject: path}."""
    return {Path(p).parent.name: p for p in paths}


run_stage(
    snakemake,
    "train",
    hr_paths=by_subject(snakemake.input.hr),
    lr_paths=by_subject(snakemake.input.lr),
    mask_paths=by_subject(snakemake.input.mask),
    splits_path=snakemake.input.splits,
    config={**snakemake.params.config, "device": snakemake.params.device},
    stage=snakemake.params.stage,
    out_checkpoint=snakemake.output.checkpoint,
    out_log=snakemake.output.log_tsv,
    out_plot=snakemake.output.plot,
)
