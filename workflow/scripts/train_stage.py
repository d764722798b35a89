from pathlib import Path

from _adapter import run_stage

from mrisr.distributed import requested_gpus


def by_subject(paths):
    """results/<kind>/<subject>/<file> -> {subject: path}."""
    return {Path(p).parent.name: p for p in paths}


# The number of GPUs the job asked for (Slurm profile: resources gpu=N) is the
# number of DDP workers; without a GPU request training runs in this process.
# Neither it nor train.checkpoint_every is a rule parameter: they do not
# change the trained model, so changing them re-runs nothing.
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
    resume_path=snakemake.params.resume,
    checkpoint_every=snakemake.config["train"]["checkpoint_every"],
    nproc=max(1, requested_gpus(snakemake.resources)),
    threads=snakemake.threads,
    log_file=snakemake.log[0],
)
