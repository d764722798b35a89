from _adapter import run_stage

from mrisr.pipeline import predict

run_stage(
    snakemake,
    predict,
    predictor_path=snakemake.input.predictor,
    cache_dir=str(__import__("pathlib").Path(snakemake.input.cache).parent),
    device=snakemake.params.device,
)
