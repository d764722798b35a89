from _adapter import run_stage

run_stage(
    snakemake,
    "collect_metrics",
    paths=list(snakemake.input.tsvs),
    out_path=snakemake.output.tsv,
)
