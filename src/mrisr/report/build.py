"""Putting the report together from the workflow's files.

``slice_figures`` makes one test subject's slice panels and sweep (rule
``plot_slices``); ``build_report`` writes ``index.html`` and the figures and
tables it embeds (rule ``report``).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from mrisr.io import atomic_path, load_volume
from mrisr.report import figures, page, provenance, slices, tables

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
    """Up to ``k`` subjects to show, with why: all of them when there are few, else lowest/median/highest gain."""
    method = headline_method(tables.method_order(rows))
    gains = tables.gains_over_baseline(rows)
    scored = sorted((gains.get((s, method), float("nan")), s) for s in available)
    if method is None or any(g != g for g, _ in scored):  # no gains to rank by: first subjects by name
        return [(s, "") for s in sorted(available)[:k]]
    def describe(gain: float) -> str:
        return f"PSNR gain of {method} over {tables.BASELINE}: {page.fmt(gain, 2, signed=True)} dB"

    if len(scored) <= k:
        return [(s, f"({describe(g)})") for g, s in sorted(scored, key=lambda x: x[1])]
    picks = (("lowest", scored[0]), ("median", scored[len(scored) // 2]), ("highest", scored[-1]))
    return [(s, f"({which} {describe(g)})") for which, (g, s) in picks]


def model_rows(config: Mapping, costs: Sequence[tables.Cost], test_subjects: Sequence[str]) -> list[dict]:
    """One row per SR method for the models section: the main model (sr) and each compared one (sr_{name}).

    Costs are matched to a model by exact job name (``stage{k}`` / ``{subject}``
    for the main model, ``{name}_stage{k}`` / ``{name}_{subject}`` for a
    compared one), so one compared name being a prefix of another cannot mix
    their costs.
    """
    from mrisr.compare import compare_configs, model_config
    from mrisr.diffusion.nets import unet_from_config

    main = model_config(config)
    models = {"sr": (main, "train_stage", "super_resolve", "")}
    for name, cfg in compare_configs(main, config.get("compare") or {}).items():
        models[f"sr_{name}"] = (cfg, "train_compare", "super_resolve_compare", f"{name}_")
    rows = []
    for method, (cfg, train_rule, sr_rule, prefix) in models.items():
        stages = {f"{prefix}stage{k}" for k in range(1, len(cfg["cascade"]["factors"]) + 1)}
        subjects = {f"{prefix}{s}" for s in test_subjects}
        train = [c for c in costs if c.rule == train_rule and c.job in stages]
        sr = [c for c in costs if c.rule == sr_rule and c.job in subjects]
        rows.append({
            "method": method,
            "variant": str(cfg["model"].get("variant", "unet3d")),
            "parameters": sum(p.numel() for p in unet_from_config(cfg["model"]).parameters()),
            "train_seconds": sum(c.seconds for c in train) if train else float("nan"),
            "train_steps": int(cfg["train"]["steps"]) * len(train),
            "sr_seconds": sum(c.seconds for c in sr) / len(sr) if sr else float("nan"),
        })
    return rows


def build_report(
    metrics_rows: Sequence[Mapping],
    splits: Mapping[str, str],
    config: Mapping,
    train_logs: Sequence[str],
    benchmark_files: Sequence[str],
    slice_files: Mapping[str, tuple[str, str]],
    out_html: str,
    out_metrics_png: str,
    out_loss_png: str,
    out_schedule_png: str,
    out_summary_tsv: str,
    out_cost_tsv: str,
    repo_dir: str | None = None,
    calibration_files: Sequence[str] = (),
) -> dict[str, float]:
    """Write ``index.html`` and the figures/tables it embeds; return seconds spent per part.

    ``metrics_rows`` are ``pipeline.read_metrics`` rows; ``train_logs`` one
    ``train_log.tsv`` per cascade stage, in stage order; ``benchmark_files``
    Snakemake benchmark TSVs at ``.../benchmarks/<rule>/<job>.tsv``;
    ``slice_files`` {subject: (panels PNG, sweep GIF)} from ``slice_figures``;
    ``calibration_files`` the test subjects' ``{subject}_calibration.tsv`` when
    several samples were drawn.
    """
    timings: dict[str, float] = {}
    if not metrics_rows:
        raise ValueError("metrics table is empty: nothing to report")
    with timed("tables", timings):
        summaries = tables.summarise(metrics_rows)
        gains = tables.gains_over_baseline(metrics_rows)
        logs = [tables.read_train_log(p) for p in train_logs]
        train = [tables.summarise_training(log_, k + 1) for k, log_ in enumerate(logs)]
        costs = [tables.read_benchmark(p) for p in benchmark_files]
        write_summary_tsv(out_summary_tsv, summaries)
        write_cost_tsv(out_cost_tsv, costs)
    with timed("metric figure", timings):
        metrics_png = figures.metric_distribution_figure(metrics_rows)
        figures.write_bytes(out_metrics_png, metrics_png)
    with timed("loss figure", timings):
        loss_png = figures.loss_figure(logs)
        figures.write_bytes(out_loss_png, loss_png)
    with timed("schedule figure", timings):
        curves = figures.schedule_curves(config["diffusion"], config["sampling"])
        schedule_png = figures.noise_schedule_figure(curves)
        figures.write_bytes(out_schedule_png, schedule_png)
        signal_loss = {name: figures.first_t_below(c["alphas_cumprod"], 1e-3) for name, c in curves["curves"].items()}
    with timed("uncertainty", timings):
        calibration = {Path(p).name.removesuffix("_calibration.tsv"): tables.read_calibration(p)
                       for p in calibration_files}
        pooled = tables.pooled_calibration(calibration) if calibration else None
        uncertainty_png = figures.uncertainty_figure(calibration, pooled) if pooled else None
    with timed("slices", timings):
        subjects_tested = sorted({r["subject"] for r in metrics_rows})
        chosen = showcase(metrics_rows, [s for s in subjects_tested if s in slice_files])
        shown = []
        for subject, why in chosen:
            panel_path, sweep_path = slice_files[subject]
            sweep = Path(sweep_path).read_bytes()
            shown.append((subject, why, Path(panel_path).read_bytes(), sweep, 2 * gif_width(sweep)))
    with timed("provenance", timings):
        versions = provenance.package_versions()
        commit = provenance.git_state(repo_dir)
        environment = provenance.lock_check(repo_dir)
        counts = provenance.split_counts(splits)
        test_subjects = sorted(s for s, v in splits.items() if v == "test")
    with timed("page", timings):
        sections = [
            ("metrics", "Metrics", page.metrics_section(
                metrics_rows, summaries, gains, tables.data_ranges(metrics_rows), metrics_png)),
            *([("models", "Models compared", page.models_section(model_rows(config, costs, test_subjects), summaries))]
              if config.get("compare") else []),
            ("slices", "Slices", page.slices_section(shown, len(subjects_tested))),
            ("uncertainty", "Uncertainty", page.uncertainty_section(
                pooled, uncertainty_png, config["sampling"], len(calibration))),
            ("training", "Training", page.training_section(train, loss_png)),
            ("schedule", "Noise schedule", page.schedule_section(
                config["diffusion"], config["sampling"], schedule_png, signal_loss)),
            ("cost", "Cost", page.cost_section(costs, train, str(config.get("device", "?")))),
            ("provenance", "Provenance", page.provenance_section(
                provenance.utc_now(), commit, versions, provenance.redact(config), counts, test_subjects,
                environment)),
        ]
        document = page.page("mrisr report", page.lead(summaries), sections)
        with atomic_path(out_html) as tmp:
            Path(tmp).write_text(document, encoding="utf-8")
    return timings


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

    with atomic_path(path) as tmp:
        tables.write_tsv(
            tmp,
            ["method", "n", "psnr_mean", "psnr_sd", "psnr_median", "ssim_mean", "ssim_sd", "ssim_median",
             "gain_mean", "gain_sd", "gain_median", "better_than_spline"],
            [[s.method, s.psnr.n, *cols(s.psnr), *cols(s.ssim), *cols(s.gain), s.wins if s.gain else ""]
             for s in summaries],
        )


def write_cost_tsv(path: str, costs: Sequence[tables.Cost]) -> None:
    with atomic_path(path) as tmp:
        tables.write_tsv(
            tmp, ["rule", "job", "seconds", "cpu_seconds", "max_rss_mb", "repeats"],
            [[c.rule, c.job, f"{c.seconds:.2f}", f"{c.cpu_seconds:.2f}", f"{c.max_rss_mb:.1f}", c.repeats]
             for c in costs],
        )

