from pathlib import Path

from _adapter import run_stage

from mrisr.pipeline import report
from mrisr.report import ReportInputs, ReportOutputs

inputs = ReportInputs(
    metrics=snakemake.input.metrics,
    splits=snakemake.input.splits,
    config=dict(snakemake.params.config),
    train_logs=list(snakemake.input.train_logs),
    benchmarks=list(snakemake.input.benchmarks),
    slices={
        subject: (panels, sweep)
        for subject, panels, sweep in zip(snakemake.params.subjects, snakemake.input.panels, snakemake.input.sweeps)
    },
    calibration=list(snakemake.input.calibration),
    sd_calibration=snakemake.input.get("sd_calibration") or None,
    compare_logs=dict(snakemake.params.compare_logs),
    repo_dir=str(Path(snakemake.scriptdir).resolve().parents[1]),
)
run_stage(
    snakemake,
    report,
    inputs=inputs,
    outputs=ReportOutputs(**{key: snakemake.output[key] for key in snakemake.output.keys()}),
)
