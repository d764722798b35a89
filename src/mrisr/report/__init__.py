"""The HTML report and its figures.

- ``tables``: the numbers (metric summaries, PSNR gains, training and run-time tables);
- ``provenance``: config with secrets redacted, package versions, git commit, date;
- ``figures``: matplotlib plots (metric distributions, loss curves, noise schedule);
- ``slices``: slice panels with zoomed insets and animated slice sweeps (GIF);
- ``page``: the self-contained HTML;
- ``build``: the two entry points the workflow calls, ``slice_figures`` and ``build_report``.
"""

from __future__ import annotations

from mrisr.report.build import ReportInputs, ReportOutputs, build_report, slice_figures
from mrisr.report.figures import plot_loss_curve

__all__ = ["ReportInputs", "ReportOutputs", "build_report", "slice_figures", "plot_loss_curve"]
