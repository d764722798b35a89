from pathlib import Path

from _adapter import run_stage

run_stage(
    snakemake,
    "report",
    metrics_path=snakemake.input.metrics,
    splits_path=snakemake.input.splits,
    config=dict(snakemake.params.config),
    train_logs=list(snakemake.input.train_logs),
    benchmark_files=list(snakemake.input.benchmarks),
    calibration_files=list(snakemake.input.calibration),
    slice_files={
        subject: (panels, sweep)
        for subject, panels, sweep in zip(snakemake.params.subjects, snakemake.input.panels, snakemake.input.sweeps)
    },
    outputs={key: snakemake.output[key] for key in snakemake.output.keys()},
    repo_dir=str(Path(snakemake.scriptdir).resolve().parents[1]),
)
