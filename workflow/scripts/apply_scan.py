from _adapter import run_stage

from mrisr.config import SamplingOptions
from mrisr.derivatives import ApplyFiles, apply_scan

run_stage(
    snakemake,
    apply_scan,
    files=ApplyFiles(
        scan=snakemake.input.scan,
        sr=snakemake.output.sr,
        mask=snakemake.input.get("mask"),  # only under the masked protocol
        sd=snakemake.output.get("sd"),
        sd_calibration=snakemake.input.get("sd_calibration"),  # apply.sd_calibration
    ),
    checkpoints=list(snakemake.input.checkpoints),
    sampling=SamplingOptions.from_mapping(snakemake.params.sampling),
    sources=list(snakemake.params.sources),
    device=snakemake.params.device,
)
