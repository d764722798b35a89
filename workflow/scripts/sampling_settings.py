from _adapter import run_stage

from mrisr.pipeline import write_sampling_settings

run_stage(snakemake, write_sampling_settings, sampling=dict(snakemake.params.sampling), out_path=snakemake.output.json)
