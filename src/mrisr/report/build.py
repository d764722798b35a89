"""Putting the report together from the workflow's files.

``slice_figures`` makes one test subject's slice panels and sweep (rule
``plot_slices``); ``build_report`` writes ``index.html`` and the figures and
tables it embeds (rule ``report``).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mrisr.config import SamplingOptions
from mrisr.data.splits import read_splits
from mrisr.io import atomic_path, load_volume, write_tsv
from mrisr.metrics import read_metrics
import mrisr.report.figures as figures
import mrisr.report.page as page
import mrisr.report.provenance as provenance
import mrisr.report.slices as slices
import mrisr.report.tables as tables

log = logging.getLogger("mrisr")

SHOWCASE_MAX = 3


@contextmanager
def timed(what: str, timings: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[what] = time.perf_counter() - start
    log.info("report: %s in %.2f s", what, timings[what])


def slice_figures(
    lr_path: str, spline_path: str, sr_path: str, hr_path: str, mask_path: str,
    subject: str, out_panels: str, out_sweep: str,
) -> None:
    """Slice panels (LR, spline, SR, HR, |errors|, three orientations) and an axial sweep GIF of one subject."""
    vols = slices.prepare_volumes(
        load_volume(lr_path),
        {"spline": load_volume(spline_path), "SR": load_volume(sr_path)},
        load_volume(hr_path),
        load_volume(mask_path),
    )
    figures.write_bytes(out_panels, slices.slice_panel_figure(vols, title=subject))
    figures.write_bytes(out_sweep, slices.sweep_gif(vols, axis=2, names=["LR", "SR", "HR"]))


def headline_method(methods: Sequence[str]) -> str | None:
    """The method the slices are chosen by: ``sr`` (the cascade's output) if present, else the first non-baseline."""
    others = [m for m in methods if m != tables.BASELINE]
    return "sr" if "sr" in others else (others[0] if others else None)


def showcase(rows: Sequence[Mapping], available: Sequence[str], k: int = SHOWCASE_MAX) -> list[tuple[str, str]]:
    """Up to ``k`` subjects to show, with why: all of them when there are few, else the lowest, median and
    highest interior PSNR gain (the headline's)."""
    method = headline_method(tables.method_order(rows))
    gains = tables.gains_over_baseline(rows, "psnr_interior")
    scored = sorted((gains.get((s, method), float("nan")), s) for s in available)
    if method is None or any(g != g for g, _ in scored):  # no gains to rank by: first subjects by name
        return [(s, "") for s in sorted(available)[:k]]
    def describe(gain: float) -> str:
        return f"interior PSNR gain of {method} over {tables.BASELINE}: {page.fmt(gain, 2, signed=True)} dB"

    if len(scored) <= k:
        return [(s, f"({describe(g)})") for g, s in sorted(scored, key=lambda x: x[1])]
    picks = (("lowest", scored[0]), ("median", scored[len(scored) // 2]), ("highest", scored[-1]))
    return [(s, f"({which} {describe(g)})") for which, (g, s) in picks]


@dataclass(frozen=True)
class ReportInputs:
    """What the report is built from: the workflow's files (rule ``report``'s inputs) and its config.

    ``train_logs`` are the main model's ``train_log.tsv``, one per cascade
    stage in order, and ``compare_logs`` each compared model's;
    ``benchmarks`` Snakemake benchmark TSVs at ``.../benchmarks/<rule>/<job>.tsv``;
    ``slices`` {subject: (panels PNG, sweep GIF)} from ``slice_figures``;
    ``calibration`` the test subjects' ``{subject}_calibration.tsv`` when
    several samples were drawn, and ``sd_calibration`` the sd maps' calibration
    fitted on validation subjects (``pipeline.fit_sd_calibration``) when they
    were calibrated; ``repo_dir`` the checkout, for its git state.
    """

    metrics: str
    splits: str
    config: Mapping
    train_logs: Sequence[str]
    benchmarks: Sequence[str] = ()
    slices: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    calibration: Sequence[str] = ()
    sd_calibration: str | None = None
    compare_logs: Mapping[str, Sequence[str]] = field(default_factory=dict)
    repo_dir: str | None = None


@dataclass(frozen=True)
class ReportOutputs:
    """The files the report writes: the page and the figures and tables it embeds."""

    html: str
    metrics_png: str
    loss_png: str
    schedule_png: str
    summary_tsv: str
    cost_tsv: str


def _parameters(logs: Sequence[Mapping[str, Sequence[float]]]) -> float:
    """A model's parameter count summed over its stages, from the train logs (nan where a log predates it)."""
    counts = [log_["parameters"][-1] for log_ in logs if "parameters" in log_]
    return float(sum(counts)) if len(counts) == len(logs) else float("nan")


def model_rows(
    config: Mapping, logs: Mapping[str, Sequence[Mapping]], costs: Sequence[tables.Cost], test_subjects: Sequence[str],
) -> list[dict]:
    """One row per SR method for the models section: the main model (sr) and each compared one (sr_{name}).

    ``logs`` holds each method's train logs (``tables.read_train_log``), one
    per stage. Costs are matched to a model by exact job name (``stage{k}`` /
    ``{subject}`` for the main model, ``compare/{name}/stage{k}`` /
    ``compare/{name}/{subject}`` for a compared one: the workflow's {branch}),
    so one compared name being a prefix of another cannot mix their costs.
    """
    from mrisr.compare import compare_configs, model_config

    main = model_config(config)
    models = {"sr": (main, "")}
    for name, cfg in compare_configs(main, config.get("compare") or {}).items():
        models[f"sr_{name}"] = (cfg, f"compare/{name}/")
    rows = []
    for method, (cfg, branch) in models.items():
        stages = {f"{branch}stage{k}" for k in range(1, len(cfg["cascade"]["factors"]) + 1)}
        subjects = {f"{branch}{s}" for s in test_subjects}
        train = [c for c in costs if c.rule == "train_stage" and c.job in stages]
        sr = [c for c in costs if c.rule == "super_resolve" and c.job in subjects]
        rows.append({
            "method": method,
            "variant": str(cfg["model"].get("variant", "unet3d")),
            "parameters": _parameters(logs.get(method, [])),
            "train_seconds": sum(c.seconds for c in train) if train else float("nan"),
            "train_steps": int(cfg["train"]["steps"]) * len(train),
            "sr_seconds": sum(c.seconds for c in sr) / len(sr) if sr else float("nan"),
        })
    return rows


def build_report(inputs: ReportInputs, outputs: ReportOutputs) -> dict[str, float]:
    """Write ``index.html`` and the figures/tables it embeds; return seconds spent per part."""
    timings: dict[str, float] = {}
    config, splits = inputs.config, read_splits(inputs.splits)
    rows = read_metrics(inputs.metrics)
    if not rows:
        raise ValueError(f"{inputs.metrics}: metrics table is empty: nothing to report")
    with timed("tables", timings):
        summaries = tables.summarise(rows)
        logs = [tables.read_train_log(p) for p in inputs.train_logs]
        train = [tables.summarise_training(log_, k + 1) for k, log_ in enumerate(logs)]
        costs = tables.with_training_peaks([tables.read_benchmark(p) for p in inputs.benchmarks], logs)
        write_summary_tsv(outputs.summary_tsv, summaries)
        write_cost_tsv(outputs.cost_tsv, costs)
    with timed("figures", timings):
        metrics_png, loss_png = _write_figures(rows, logs, outputs)
        curves = figures.schedule_curves(config["diffusion"], SamplingOptions.from_mapping(config["sampling"]))
        schedule_png = figures.noise_schedule_figure(curves)
        figures.write_bytes(outputs.schedule_png, schedule_png)
        signal_loss = {name: figures.first_t_below(c["alphas_cumprod"], 1e-3) for name, c in curves["curves"].items()}
    with timed("uncertainty", timings):
        calibration = {Path(p).name.removesuffix("_calibration.tsv"): tables.read_calibration(p)
                       for p in inputs.calibration}
        pooled = tables.pooled_calibration(calibration) if calibration else None
        uncertainty_png = figures.uncertainty_figure(calibration, pooled) if pooled else None
        sd_calibration = json.loads(Path(inputs.sd_calibration).read_text()) if inputs.sd_calibration else None
    with timed("slices", timings):
        shown = _showcased_slices(rows, inputs.slices)
    with timed("page", timings):
        test_subjects = sorted(s for s, v in splits.items() if v == "test")
        compared = []
        if config.get("compare"):
            model_logs = {"sr": logs} | {f"sr_{name}": [tables.read_train_log(p) for p in paths]
                                         for name, paths in inputs.compare_logs.items()}
            compared = [("models", "Models compared", page.models_section(
                model_rows(config, model_logs, costs, test_subjects), summaries))]
        sections = [
            ("metrics", "Metrics", page.metrics_section(
                rows, summaries, {key: tables.gains_over_baseline(rows, key) for key in ("psnr", "psnr_interior")},
                tables.data_ranges(rows), metrics_png)),
            *compared,
            ("slices", "Slices", page.slices_section(shown, len({r["subject"] for r in rows}))),
            ("uncertainty", "Uncertainty", page.uncertainty_section(
                pooled, uncertainty_png, config["sampling"], len(calibration), sd_calibration)),
            ("training", "Training", page.training_section(train, loss_png)),
            ("schedule", "Noise schedule", page.schedule_section(
                config["diffusion"], config["sampling"], schedule_png, signal_loss)),
            ("cost", "Cost", page.cost_section(costs, train, str(config.get("device", "?")))),
            ("provenance", "Provenance", page.provenance_section(
                provenance.utc_now(), provenance.git_state(inputs.repo_dir), provenance.package_versions(),
                provenance.redact(config), provenance.split_counts(splits), test_subjects,
                provenance.lock_check(inputs.repo_dir))),
        ]
        document = page.page("mrisr report", page.lead(summaries), sections)
        with atomic_path(outputs.html) as tmp:
            Path(tmp).write_text(document, encoding="utf-8")
    return timings


def _write_figures(rows: Sequence[Mapping], logs: Sequence[Mapping], outputs: ReportOutputs) -> tuple[bytes, bytes]:
    """The metric distribution and loss figures, written to their files; returns their PNG bytes."""
    metrics_png = figures.metric_distribution_figure(rows)
    figures.write_bytes(outputs.metrics_png, metrics_png)
    loss_png = figures.loss_figure(logs)
    figures.write_bytes(outputs.loss_png, loss_png)
    return metrics_png, loss_png


def _showcased_slices(
    rows: Sequence[Mapping], slice_files: Mapping[str, tuple[str, str]]
) -> list[tuple[str, str, bytes, bytes, int]]:
    """(subject, why, panels PNG, sweep GIF, display width) of the subjects the page shows (``showcase``)."""
    subjects = sorted({r["subject"] for r in rows})
    shown = []
    for subject, why in showcase(rows, [s for s in subjects if s in slice_files]):
        panel_path, sweep_path = slice_files[subject]
        sweep = Path(sweep_path).read_bytes()
        shown.append((subject, why, Path(panel_path).read_bytes(), sweep, 2 * gif_width(sweep)))
    return shown


def gif_width(data: bytes) -> int:
    """A GIF's logical screen width (bytes 6-7 of its header, little-endian)."""
    if data[:3] != b"GIF":
        raise ValueError("not a GIF")
    return int.from_bytes(data[6:8], "little")


def write_summary_tsv(path: str, summaries: Sequence[tables.MethodSummary]) -> None:
    def cols(s: tables.Stats | None) -> list[object]:
        if s is None:
            return ["", "", ""]
        return [repr(s.mean), "" if s.sd is None else repr(s.sd), repr(s.median)]

    write_tsv(
        path,
        ["method", "n", "psnr_mean", "psnr_sd", "psnr_median", "ssim_mean", "ssim_sd", "ssim_median",
         "gain_mean", "gain_sd", "gain_median", "better_than_spline",
         "psnr_interior_mean", "psnr_interior_sd", "psnr_interior_median",
         "ssim_interior_mean", "ssim_interior_sd", "ssim_interior_median",
         "gain_interior_mean", "gain_interior_sd", "gain_interior_median", "better_than_spline_interior",
         "hfen_mean", "hfen_sd", "hfen_median"],
        [[s.method, s.psnr.n, *cols(s.psnr), *cols(s.ssim), *cols(s.gain), s.wins if s.gain else "",
          *cols(s.psnr_interior), *cols(s.ssim_interior), *cols(s.gain_interior),
          s.wins_interior if s.gain_interior else "", *cols(s.hfen)]
         for s in summaries],
    )


def write_cost_tsv(path: str, costs: Sequence[tables.Cost]) -> None:
    write_tsv(
        path, ["rule", "job", "seconds", "cpu_seconds", "max_rss_mb", "repeats"],
        [[c.rule, c.job, f"{c.seconds:.2f}", f"{c.cpu_seconds:.2f}", f"{c.max_rss_mb:.1f}", c.repeats]
         for c in costs],
    )
