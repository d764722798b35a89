from pathlib import Path

from _adapter import run_stage

from mrisr.derivatives import describe_derivatives

run_stage(
    snakemake,
    describe_derivatives,
    out_path=snakemake.output.json,
    sources=list(snakemake.params.sources),
    links=dict(snakemake.params.links),
    repo_dir=str(Path(snakemake.scriptdir).resolve().parents[1]),
)
