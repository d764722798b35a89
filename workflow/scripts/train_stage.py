from pathlib import Path

from _adapter import run_stage

from mrisr.distributed import requested_gpus
from mrisr.pipeline import train
from mrisr.training import StageRun, TrainJob


def by_subject(paths):
    """results/cache/stage<k>/<subject>/cache.json -> {subject: its cache directory}."""
    return {Path(p).parent.name: str(Path(p).parent) for p in paths}


# The number of GPUs the job asked for (Slurm profile: resources gpu=N) is the
# number of DDP workers; without a GPU request training runs in this process.
# Neither it nor train.checkpoint_every nor train.loader_workers is a rule
# parameter: they do not change the trained model, so changing them re-runs nothing.
run = StageRun(
    config={**snakemake.params.config, "device": snakemake.params.device},
    stage=snakemake.params.stage,
    checkpoint=snakemake.output.checkpoint,
    log_tsv=snakemake.output.log_tsv,
    resume=snakemake.params.resume,
    checkpoint_every=snakemake.config["train"]["checkpoint_every"],
    loader_workers=snakemake.config["train"]["loader_workers"],
    network=snakemake.params.network,  # the stage's predictor (train_predictor) or its diffusion model
    predictor=snakemake.input.get("predictor"),  # predict-and-refine: the predictor the diffusion refines
)
job = TrainJob(
    run=run,
    splits=snakemake.input.splits,
    caches=by_subject(snakemake.input.caches),
)
run_stage(
    snakemake,
    train,
    job=job,
    out_plot=snakemake.output.plot,
    nproc=max(1, requested_gpus(snakemake.resources)),
    threads=snakemake.threads,
    log_file=snakemake.log[0],
)
