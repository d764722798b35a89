from _adapter import run_stage

from mrisr.data.local import LocalScan
from mrisr.pipeline import fetch

# Transfer settings (credentials profile, endpoint, retries, timeouts) are read
# from the config rather than params: changing them must not re-fetch anything.
t1 = snakemake.input.get("t1")
run_stage(
    snakemake,
    fetch,
    subject=snakemake.wildcards.subject,
    config=snakemake.config,
    out_t1=snakemake.output.t1,
    out_mask=snakemake.output.get("mask"),
    scan=LocalScan(t1, snakemake.input.get("mask")) if t1 else None,
)
