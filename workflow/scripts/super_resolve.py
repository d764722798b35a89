from _adapter import run_stage

from mrisr.config import SamplingOptions
from mrisr.pipeline import read_sampling_settings, super_resolve

run_stage(
    snakemake,
    super_resolve,
    lr_path=snakemake.input.lr[0],
    checkpoints=list(snakemake.input.checkpoints),
    # the run's sampling settings (results/models/sampling.json), which mrisr super-resolve reads too
    sampling=SamplingOptions.from_mapping(read_sampling_settings(snakemake.input.sampling)),
    out_sr=snakemake.output.sr,
    out_stages=list(snakemake.output.stages),
    device=snakemake.params.device,
    # the samples' sd; for predict-and-refine, g alone and one sample (absent: not written)
    extra={name: snakemake.output.get(name) for name in ("sd", "predictor", "sample")},
)
