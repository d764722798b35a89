from _adapter import run_stage

# Transfer settings (credentials profile, endpoint, retries, timeouts) are read
# from the config rather than params: changing them must not re-fetch anything.
source = snakemake.params.source
run_stage(
    snakemake,
    "fetch",
    subject=snakemake.wildcards.subject,
    source=source,
    out_t1=snakemake.output.t1,
    out_mask=snakemake.output.get("mask"),
    settings=dict(snakemake.config.get(source, {})),
    local_t1=snakemake.input.get("t1"),
    local_mask=snakemake.input.get("mask"),
)
