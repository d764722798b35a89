from pathlib import Path

from _adapter import run_stage

from mrisr.pipeline import predict

run_stage(
    snakemake,
    predict,
    predictor_path=snakemake.input.predictor,
    cache_dirs=[str(Path(info).parent) for info in snakemake.input.caches],
    device=snakemake.params.device,
)
