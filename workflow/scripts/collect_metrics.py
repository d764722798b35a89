from _adapter import run_stage

from mrisr.pipeline import collect_metrics

run_stage(
    snakemake,
    collect_metrics,
    paths=list(snakemake.input.tsvs),
    out_path=snakemake.output.tsv,
)
