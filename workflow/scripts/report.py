from _adapter import run_stage

run_stage(
    snakemake,
    "report",
    metrics_path=snakemake.input.metrics,
    splits_path=snakemake.input.splits,
    config=dict(snakemake.params.config),
    train_logs=list(snakemake.input.train_logs),
    figure_subject=snakemake.params.figure_subject,
    figure_volumes={
        "LR": snakemake.input.lr[0],
        "spline": snakemake.input.spline[0],
        "SR": snakemake.input.sr[0],
        "HR": snakemake.input.hr[0],
    },
    out_html=snakemake.output.html,
)
