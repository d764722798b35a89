from _adapter import run_stage

run_stage(
    snakemake,
    "super_resolve",
    lr_path=snakemake.input.lr[0],
    checkpoints=list(snakemake.input.checkpoints),
    sampling=dict(snakemake.params.sampling),
    seed=snakemake.params.sampling["seed"],
    out_sr=snakemake.output.sr,
    out_stages=list(snakemake.output.stages),
    device=snakemake.params.device,
    out_sd=snakemake.output.get("sd"),
)
