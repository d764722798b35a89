from pathlib import Path

from _adapter import run_stage

from mrisr.derivatives import apply_report
from mrisr.report.apply import ApplyReportInputs

inputs = ApplyReportInputs(
    scans={
        name: files
        for name, *files in zip(snakemake.params.names, snakemake.input.sidecars, snakemake.input.panels,
                                snakemake.input.thumbs)
    },
    config=dict(snakemake.params.config),
    model_config=dict(snakemake.params.model_config),
    checkpoints=list(snakemake.params.checkpoints),
    benchmarks=list(snakemake.input.benchmarks),
    panels_max=snakemake.params.panels_max,
    repo_dir=str(Path(snakemake.scriptdir).resolve().parents[1]),
)
run_stage(snakemake, apply_report, inputs=inputs, out_html=snakemake.output.html,
          derivatives=snakemake.params.derivatives)
