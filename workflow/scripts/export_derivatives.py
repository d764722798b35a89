from _adapter import run_stage

from mrisr.config import SamplingOptions
from mrisr.derivatives import ApplyFiles, HeldOutFiles, export_test_subject

run_stage(
    snakemake,
    export_test_subject,
    inputs=HeldOutFiles(lr=snakemake.input.lr, sr=snakemake.input.sr, mask=snakemake.input.mask,
                        sd=snakemake.input.get("sd"), sd_calibration=snakemake.input.get("sd_calibration")),
    out=ApplyFiles(scan=snakemake.input.lr, sr=snakemake.output.sr, sd=snakemake.output.get("sd")),
    out_mask=snakemake.output.mask,
    checkpoints=list(snakemake.input.checkpoints),
    factors=list(snakemake.params.factors),
    sampling=SamplingOptions.from_mapping(snakemake.params.sampling),
    sources=list(snakemake.params.sources),
)
