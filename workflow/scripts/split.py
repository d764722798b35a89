from _adapter import run_stage

from mrisr.pipeline import split

run_stage(
    snakemake,
    split,
    subjects=list(snakemake.params.subjects),
    seed=snakemake.params.seed,
    val_fraction=snakemake.params.val_fraction,
    test_fraction=snakemake.params.test_fraction,
    out_path=snakemake.output.tsv,
)
