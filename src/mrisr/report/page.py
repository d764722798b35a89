"""``index.html``: one self-contained page (images embedded as data URIs, no scripts, no requests).

Every number in a table cell is also written, unrounded, to a ``data-*``
attribute (``data-value``, or ``data-mean`` / ``data-sd`` for a mean ± sd
cell), so a test or a script can read the page back and compare it with
``metrics.tsv`` exactly.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Mapping, Sequence

import yaml

from mrisr.data.degrade import factor_label
from mrisr.diffusion.cascade import total_factor
from mrisr.metrics import INTERIOR_EROSION
from mrisr.report.provenance import LockCheck
from mrisr.report.tables import BASELINE, Cost, MethodSummary, Stats, TrainingSummary, hms

CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#d9dce1;--head:#f2f4f7;--accent:#1f5fbf}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
 max-width:1280px;margin:0 auto;padding:1.5em 1.2em 4em}
h1{font-size:1.8em;margin:.2em 0}h2{margin-top:2em;padding-top:.6em;border-top:2px solid var(--line)}
h3{margin:1.4em 0 .4em}a{color:var(--accent)}
nav{display:flex;flex-wrap:wrap;gap:.4em 1.2em;margin:.8em 0;font-size:.95em}
.lead{font-size:1.08em;background:#f7f9fc;border-left:4px solid var(--accent);padding:.6em 1em;margin:1em 0}
.note{color:var(--muted);font-size:.92em;max-width:95ch}
table{border-collapse:collapse;margin:.8em 0 1.2em;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:.3em .7em;text-align:right;vertical-align:top}
th{background:var(--head);font-weight:600}td:first-child,th:first-child{text-align:left}
td.text,th.text{text-align:left}tbody tr:nth-child(even){background:#fafbfc}
.kv th{text-align:left;white-space:nowrap}.kv td{text-align:left}
.neg{color:#b3261e}.pos{color:#1e7b34}
figure{margin:1em 0 1.6em}figcaption{color:var(--muted);font-size:.92em;max-width:110ch;margin-top:.3em}
img{max-width:100%;height:auto}img.sweep{image-rendering:pixelated;image-rendering:crisp-edges}
pre{background:#f6f8fa;border:1px solid var(--line);padding:.8em;overflow:auto;font-size:.86em;line-height:1.35}
details{margin:.6em 0}summary{cursor:pointer;color:var(--accent)}
code{font-size:.92em}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def fmt(value: float | None, digits: int, signed: bool = False) -> str:
    """A number for display: fixed digits, '−' for minus, 'n/a' for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", "−")


def num(value: float | None, digits: int, signed: bool = False) -> str:
    """A table cell holding one number, shown rounded, kept exactly in ``data-value``."""
    if value is None:
        return '<td data-value="">n/a</td>'
    cls = ""
    if signed and math.isfinite(value) and round(value, digits) != 0:
        cls = ' class="pos"' if value > 0 else ' class="neg"'
    return f'<td data-value="{value!r}"{cls}>{fmt(value, digits, signed)}</td>'


def mean_sd(stats: Stats | None, digits: int, signed: bool = False) -> str:
    """A 'mean ± sd' cell; the exact values in ``data-mean`` and ``data-sd`` (empty sd for n < 2)."""
    if stats is None:
        return '<td data-mean="" data-sd="">n/a</td>'
    sd = "" if stats.sd is None else repr(stats.sd)
    shown = fmt(stats.mean, digits, signed) + (f" ± {fmt(stats.sd, digits)}" if stats.sd is not None else " (n = 1)")
    return f'<td data-mean="{stats.mean!r}" data-sd="{sd}">{shown}</td>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str, text_cols: int = 1) -> str:
    """A table whose rows are lists of ready-made ``<td>`` strings (or plain text, escaped here)."""
    head = "".join(f'<th{" class=text" if k < text_cols else ""}>{h}</th>' for k, h in enumerate(header))
    body = []
    for row in rows:
        cells = [c if str(c).startswith("<td") else f'<td class="text">{esc(c)}</td>' for c in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def figure(src: str, alt: str, caption: str, cls: str = "", width: int | None = None) -> str:
    attrs = f' class="{cls}"' if cls else ""
    if width:
        attrs += f' style="width:{width}px"'
    return f'<figure><img src="{src}" alt="{esc(alt)}"{attrs}><figcaption>{caption}</figcaption></figure>'


# -- sections ------------------------------------------------------------------------------

def lead(summaries: Sequence[MethodSummary]) -> str:
    """One sentence per method: its PSNR in the brain's interior against the baseline's (the headline), on how
    many subjects it won there, and its whole-mask gain beside it."""
    base = next((s for s in summaries if s.method == BASELINE), None)
    parts = []
    for s in summaries:
        if s.method == BASELINE:
            continue
        text = (f"<b>{esc(s.method)}</b>: interior PSNR {fmt(s.psnr_interior.mean, 2)} dB, "
                f"SSIM {fmt(s.ssim_interior.mean, 4)}")
        if base is not None and s.gain_interior is not None and s.gain is not None:
            text += (f" against {fmt(base.psnr_interior.mean, 2)} dB and {fmt(base.ssim_interior.mean, 4)} for the "
                     f"{BASELINE} baseline: <b>interior PSNR gain {fmt(s.gain_interior.mean, 2, signed=True)} dB</b>, "
                     f"better than {BASELINE} on {s.wins_interior} of {s.gain_interior.n} test "
                     f"subject{'s' if s.gain_interior.n != 1 else ''} (whole brain mask: "
                     f"{fmt(s.gain.mean, 2, signed=True)} dB; HFEN {fmt(s.hfen.mean, 3)} against "
                     f"{fmt(base.hfen.mean, 3)})")
        parts.append(text + ".")
    if not parts:
        return ""
    n = max(s.psnr.n for s in summaries)
    return (f'<p class="lead">Mean over {n} test subject{"s" if n != 1 else ""}, inside the brain mask eroded by '
            f"{INTERIOR_EROSION} voxels (the interior, where a gain cannot come from the mask's edge). "
            + " ".join(parts) + "</p>")


def metrics_section(
    rows: Sequence[Mapping], summaries: Sequence[MethodSummary],
    gains: Mapping[str, Mapping[tuple[str, str], float]], ranges: Sequence[float], figure_png: bytes,
) -> str:
    """The metrics tables; ``gains`` maps psnr and psnr_interior to {(subject, method): gain over the baseline}."""
    range_text = " and ".join(f"{r:g}" for r in ranges)
    warn = "" if len(ranges) == 1 else " <b>The rows of metrics.tsv do not agree on the data range.</b>"
    summary_rows = [
        [s.method, f'<td data-value="{s.psnr.n}">{s.psnr.n}</td>',
         mean_sd(s.psnr_interior, 2), mean_sd(s.ssim_interior, 4), *_gain_cells(s.gain_interior, s.wins_interior),
         mean_sd(s.psnr, 2), mean_sd(s.ssim, 4), *_gain_cells(s.gain, s.wins), mean_sd(s.hfen, 4)]
        for s in summaries
    ]
    order = {s.method: k for k, s in enumerate(summaries)}
    per_subject = []
    for r in sorted(rows, key=lambda r: (r["subject"], order[r["method"]])):
        baseline = r["method"] == BASELINE
        gain_cells = ['<td data-value="">baseline</td>'] * 2 if baseline else [
            num(gains[key].get((r["subject"], r["method"])), 2, signed=True) for key in ("psnr_interior", "psnr")]
        per_subject.append([r["subject"], f'<td class="text">{esc(r["method"])}</td>',
                            num(r["psnr_interior"], 2), num(r["ssim_interior"], 4), gain_cells[0],
                            num(r["psnr"], 2), num(r["ssim"], 4), gain_cells[1], num(r["hfen"], 4)])
    return "".join([
        '<h2 id="metrics">Metrics on the test subjects</h2>',
        f'<p class="note">Every score compares a method\'s volume with the subject\'s HR volume on intensities '
        f"normalised so the brain's 99.5th percentile is 1 and clipped to [0, 1]: <b>data range = {range_text}</b> "
        f"(the <code>data_range</code> column of <code>metrics.tsv</code>).{warn} "
        f"<b>Interior</b>: inside the brain mask eroded by {INTERIOR_EROSION} voxels (6-connected), the headline: "
        f"at the mask's edge the brain meets a dark background and a gain there says little about anatomy. "
        f"<b>Whole mask</b>: inside the brain mask. SSIM is the SSIM map of the whole volume (Gaussian window, "
        f"σ = 1.5, K1 = 0.01, K2 = 0.03) averaged over the region's voxels. HFEN (Ravishankar &amp; Bresler "
        f"2011): the relative L2 error of the volumes filtered by a Laplacian of Gaussian (σ = 1.5 voxels), "
        f"inside the mask; lower is better. A PSNR gain is PSNR(method) − PSNR({BASELINE}) on the same "
        f"subject; sd is the sample standard deviation (n − 1).</p>",
        table(["method", "n", "interior PSNR (dB) mean ± sd", "interior SSIM mean ± sd",
               f"interior gain over {BASELINE} (dB) mean ± sd", f"better than {BASELINE} (interior)",
               "whole-mask PSNR (dB) mean ± sd", "whole-mask SSIM mean ± sd",
               f"whole-mask gain over {BASELINE} (dB) mean ± sd", f"better than {BASELINE} (whole mask)",
               "HFEN mean ± sd"],
              summary_rows, "metrics-summary"),
        "<h3>Per subject</h3>",
        table(["subject", "method", "interior PSNR (dB)", "interior SSIM", "interior gain (dB)",
               "whole-mask PSNR (dB)", "whole-mask SSIM", "whole-mask gain (dB)", "HFEN"],
              per_subject, "metrics-per-subject", text_cols=2),
        figure(data_uri(figure_png, "image/png"), "metric distribution by method",
               "Per-subject interior and whole-mask PSNR gains over the spline baseline, interior PSNR and SSIM, "
               "one column per method; grey lines join one subject's values."),
    ])


def _gain_cells(gain: Stats | None, wins: int) -> list[str]:
    if gain is None:
        return ['<td data-mean="" data-sd="">–</td>', '<td data-value="">–</td>']
    return [mean_sd(gain, 2, signed=True), f'<td data-value="{wins}">{wins} / {gain.n}</td>']


def slices_section(showcase: Sequence[tuple[str, str, bytes, bytes, int]], n_test: int) -> str:
    """``showcase``: (subject, why it is shown, panel PNG, sweep GIF, sweep width in px)."""
    parts = [
        '<h2 id="slices">Slices</h2>',
        f'<p class="note">Shown: {len(showcase)} of {n_test} test subjects (with more than three, the lowest, '
        "median and highest interior PSNR gain over spline). Slices through the brain mask's centre of mass, "
        "in neurological convention (left is left). LR is drawn as its own voxels; LR, spline, SR and HR share "
        "the intensity scale [0, 1]; the error maps share one scale (the 99.5th percentile of the errors inside "
        "the brain) and are zero outside the mask, where the metrics are not computed. The yellow box marks "
        "the region magnified in each panel's inset: the window with the most HR edge detail.</p>",
    ]
    for subject, why, panel, sweep, width in showcase:
        parts.append(f"<h3>{esc(subject)} <small class=note>{why}</small></h3>")
        parts.append(figure(data_uri(panel, "image/png"), f"slice panels {subject}",
                            f"{esc(subject)}: axial, coronal and sagittal slices."))
        parts.append(figure(data_uri(sweep, "image/gif"), f"slice sweep {subject}",
                            f"{esc(subject)}: axial sweep through the brain, LR (its voxels), SR, HR "
                            "(every k-th slice, 64 grey levels).", cls="sweep", width=width))
    return "".join(parts)


def training_section(summaries: Sequence[TrainingSummary], loss_png: bytes) -> str:
    rows = [[f"stage {t.stage}", f'<td data-value="{t.steps}">{t.steps}</td>',
             num(t.final_train_loss, 5), num(t.final_val_loss, 5), num(t.best_val_loss, 5),
             f'<td data-value="{t.best_val_step}">{t.best_val_step}</td>']
            for t in summaries]
    return "".join([
        '<h2 id="training">Training</h2>',
        figure(data_uri(loss_png, "image/png"), "loss curves",
               "Training loss (running mean) and validation loss (EMA weights, on fixed validation patches) "
               "of every cascade stage, log scale."),
        table(["stage", "steps", "final train loss", "final val loss", "best val loss", "at step"],
              rows, "training-summary"),
    ])


def models_section(models: Sequence[Mapping], summaries: Sequence[MethodSummary]) -> str:
    """The main model against the compared ones (config key ``compare``): cost and quality side by side.

    ``models``: one mapping per SR method with method, variant, parameters,
    train_seconds, train_steps (summed over stages), sr_seconds (mean per test subject).
    """
    by_method = {s.method: s for s in summaries}
    rows = []
    for m in models:
        s = by_method.get(m["method"])
        steps = m["train_steps"]
        rows.append([
            m["method"], f'<td class="text">{esc(m["variant"])}</td>', num(m["parameters"], 0),
            f'<td data-value="{m["train_seconds"]!r}">{hms(m["train_seconds"])}</td>',
            num(m["train_seconds"] / steps if steps else None, 3), num(m["sr_seconds"], 1),
            num(s.psnr_interior.mean if s else None, 2),
            num(s.gain_interior.mean if s and s.gain_interior else None, 2, signed=True),
            num(s.gain.mean if s and s.gain else None, 2, signed=True), num(s.ssim_interior.mean if s else None, 4),
        ])
    return "".join([
        '<h2 id="models">Models compared</h2>',
        "<p>The main model (<code>sr</code>) and the models of the <code>compare</code> config key, trained on "
        "the same subjects and sampled the same way. Training time is the wall time of all cascade stages "
        "(Snakemake benchmark files), SR time the mean over test subjects; quality as in the metrics table.</p>",
        table(["method", "model", "parameters", "training", "s / step", "SR per subject (s)",
               "interior PSNR mean (dB)", f"interior gain over {BASELINE} (dB)",
               f"whole-mask gain over {BASELINE} (dB)", "interior SSIM mean"], rows, "models-compared", text_cols=2),
    ])


def uncertainty_section(
    pooled: Mapping[str, Sequence[float]] | None, png: bytes | None, sampling: Mapping, n_subjects: int,
    sd_calibration: Mapping | None = None,
) -> str:
    head = '<h2 id="uncertainty">Uncertainty</h2>'
    n = int(sampling.get("n_samples", 1))
    if pooled is None or png is None:
        return head + (f"<p>One sample per subject (sampling.n_samples = {n}): no uncertainty map. With "
                       "n_samples &gt; 1 every test subject gets <code>sr/{subject}/sd.nii.gz</code>, the "
                       "per-voxel standard deviation of its samples, and this section shows how the error "
                       "of SR follows it.</p>")
    estimate = sampling.get("estimate", "sample_mean")
    what = ("the posterior-mean estimate (x0 prediction from pure noise)" if estimate == "posterior_mean"
            else f"the mean of the {n} samples")
    ratio = pooled["rmse"][-1] / pooled["rmse"][0] if pooled["rmse"][0] > 0 else float("nan")
    # bins hold equal counts, so the mean of the bins' mean squares is the overall mean square
    rms_sds = pooled.get("rms_sd") or pooled["sd"]
    rms_sd = math.sqrt(sum(v * v for v in rms_sds) / len(rms_sds))
    rms_error = math.sqrt(sum(e * e for e in pooled["rmse"]) / len(pooled["rmse"]))
    ends = [rms_sds[k] / pooled["rmse"][k] if pooled["rmse"][k] > 0 else None for k in (0, -1)]
    rows = [[f"{k + 1}", num(sd, 4), num(rms, 4), num(err, 4), num(err / rms if rms > 0 else None, 2)]
            for k, (sd, rms, err) in enumerate(zip(pooled["sd"], rms_sds, pooled["rmse"]))]
    return "".join([
        head,
        f"<p>Per voxel, the sd map (<code>sd.nii.gz</code>, from {n} samples) against the error of SR, "
        f"{esc(what)}, inside the brain mask of {n_subjects} test subject{'s' if n_subjects != 1 else ''}. "
        f"Voxels are sorted by predicted sd into bins of equal count. The error in the most uncertain bin is "
        f"{fmt(ratio, 1)}× that in the least uncertain one. On the diagonal, errors are as large as the sd "
        "predicts; points above it are over-confident.</p>",
        _calibration_text(sd_calibration, rms_sd / rms_error if rms_error > 0 else None, ends),
        figure(data_uri(png, "image/png"), "binned error against predicted sd",
               "RMS error of SR against the RMS predicted sd per bin; thin lines are single subjects."),
        table(["bin", "mean predicted sd", "RMS predicted sd", "RMS error", "RMS error / RMS sd"], rows,
              "uncertainty-bins"),
    ])


def _calibration_text(sd_calibration: Mapping | None, held_out: float | None, ends: Sequence[float | None]) -> str:
    """How the sd map was calibrated, and how well it holds on the test subjects (overall and at both ends)."""
    if sd_calibration is None:
        how = ("The map is the samples' standard deviation as drawn (<code>calibration.subjects: 0</code>): "
               "a few samples of a briefly trained model spread less than their error, and the mean of N samples "
               "has an expected squared error of (1 + 1/N) times the posterior variance.")
    else:
        k = len(sd_calibration.get("subjects", {}))
        floor, scale = sd_calibration["floor"], sd_calibration["scale"]
        if scale == 0:
            formula = (f"the constant {fmt(floor, 4)}, the validation subjects' RMS error: there the samples' "
                       "spread did not rise with the error, so it says nothing about where the error is")
        elif floor > 0:
            formula = (f"√({fmt(floor, 4)}² + ({fmt(scale, 2)}·sd)²), a floor for the error no sample varies "
                       "beside the samples' spread")
        else:
            formula = f"{fmt(scale, 2)}·sd (σ-scaling, after Laves et al. 2020)"
        how = (f"The map is the samples' standard deviation sd calibrated as {formula} "
               f"(<code>calibration.method: {esc(str(sd_calibration.get('method', '')))}</code>), fitted on {k} "
               f"validation subject{'s' if k != 1 else ''} super-resolved exactly as the test subjects are: there "
               f"the RMS error of SR was {fmt(sd_calibration['rms_error'], 4)} and the samples' RMS sd "
               f"{fmt(sd_calibration['rms_sd'], 4)} (<code>calibration/sd_calibration.json</code>). Nothing is "
               "fitted on the test subjects, so the figures here are a held-out check.")
    return (f"<p>{how} On the test subjects RMS(sd) / RMS(error) = <b>{fmt(held_out, 2)}</b> "
            f"({fmt(ends[0], 2)} in the least uncertain bin, {fmt(ends[1], 2)} in the most uncertain one; "
            "1 = calibrated, below 1 over-confident). Part of any error against the HR is the HR's own "
            "noise, which no model can predict and no map of the samples' spread explains; on the demo, whose "
            "noise-free volumes are known, <code>benchmarks/hr_noise.py</code> measures that part "
            "(docs/benchmarks.md).</p>")


def schedule_section(
    diffusion: Mapping, sampling: Mapping, schedule_png: bytes, signal_loss: Mapping[str, int | None]
) -> str:
    loss_text = "; ".join(
        f"{esc(name)}: ᾱ_t &lt; 10⁻³ from t = {t}" if t else f"{esc(name)}: ᾱ_t stays ≥ 10⁻³"
        for name, t in signal_loss.items()
    )
    return "".join([
        '<h2 id="schedule">Noise schedule</h2>',
        figure(data_uri(schedule_png, "image/png"), "noise schedule",
               f"Configured: <b>{esc(diffusion['schedule'])}</b>, T = {diffusion['num_timesteps']}, "
               f"noise_var = {diffusion['noise_var']:g}; x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε ~ N(0, noise_var I). "
               f"The comparison curve is the seed paper's schedule (ᾱ_t = ∏ cos²(πs/2T)) or, when that is "
               f"configured, the cosine one. {loss_text}. Sampler: {esc(sampling['method'])}, "
               f"{sampling['steps']} steps (ticks on the SNR curve)."),
    ])


def cost_section(costs: Sequence[Cost], train: Sequence[TrainingSummary], device: str) -> str:
    by_rule: dict[str, list[Cost]] = {}
    for c in costs:
        by_rule.setdefault(c.rule, []).append(c)
    parts = ['<h2 id="cost">Cost</h2>',
             f'<p class="note">From Snakemake\'s <code>benchmark:</code> files (<code>results/benchmarks/</code>): '
             f"wall-clock time, CPU time and peak resident memory of each job (for training, the training "
             f"process's high-water mark VmHWM from its train log); configured device: "
             f"<code>{esc(device)}</code>.</p>"]
    steps = {f"stage{t.stage}": t.steps for t in train}
    order = list(COST_TITLES)  # training, inference, evaluation; any other rule after them
    for rule in sorted(by_rule, key=lambda r: (order.index(r) if r in order else len(order), r)):
        items = by_rule[rule]
        training = rule == "train_stage"
        rows = []
        for c in sorted(items, key=lambda c: c.job):
            row = [c.job, f'<td data-value="{c.seconds!r}">{hms(c.seconds)}</td>', num(c.seconds, 1),
                   num(c.cpu_seconds, 1), num(c.max_rss_mb, 0)]
            if training:
                row.append(num(c.seconds / steps[c.job], 3) if steps.get(c.job) else '<td data-value="">–</td>')
            rows.append(row)
        total = sum(c.seconds for c in items)
        row = ['<td class="text"><b>total</b></td>', f'<td data-value="{total!r}"><b>{hms(total)}</b></td>',
               num(total, 1), num(sum(c.cpu_seconds for c in items), 1), '<td data-value="">–</td>']
        rows.append(row + (['<td data-value="">–</td>'] if training else []))
        title = COST_TITLES.get(rule, rule)
        parts.append(f"<h3>{esc(title)} <small class=note>(rule <code>{esc(rule)}</code>)</small></h3>")
        header = ["job", "wall time", "seconds", "CPU seconds", "peak memory (MB)"] + (["s / step"] if training else [])
        parts.append(table(header, rows, f"cost-{rule}"))
    return "".join(parts)


COST_TITLES = {
    "train_stage": "Training, per cascade stage",
    "super_resolve": "Super-resolution, per test subject",
    "evaluate": "Evaluation, per test subject",
    "apply_scan": "Super-resolution, per scan (apply mode)",
}


def provenance_section(
    generated: str, commit: str, versions: Mapping[str, str], config: Mapping, counts: Mapping[str, int],
    test_subjects: Sequence[str], environment: LockCheck,
) -> str:
    factors = config.get("cascade", {}).get("factors", [])
    total = factor_label(total_factor(factors)) if factors else "1"
    sampling = config.get("sampling", {})
    kv = [
        ("generated", esc(generated)),
        ("code", f"mrisr {esc(versions.get('mrisr', '?'))}, git commit <code>{esc(commit)}</code>"),
        ("data source", f"<b>{esc(config.get('source', '?'))}</b>"),
        ("subjects", f"{counts['train']} train, {counts['val']} validation, {counts['test']} test "
                     f"(split by subject, seed {esc(config.get('split', {}).get('seed', '?'))})"),
        ("test subjects", esc(", ".join(test_subjects))),
        ("scale", f"×{total} (cascade {' × '.join(factor_label(f) for f in factors)})"),
        ("sampler", f"{esc(sampling.get('method', '?'))}, {esc(sampling.get('steps', '?'))} steps, "
                    f"seed {esc(sampling.get('seed', '?'))}"),
        ("packages", ", ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items())),
        ("environment", environment_html(environment)),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in kv)
    config_yaml = to_yaml(config)
    return "".join([
        '<h2 id="provenance">Provenance</h2>',
        f'<table class="kv" id="provenance-table"><tbody>{rows}</tbody></table>',
        "<details><summary>Resolved configuration (schema defaults filled in; secret-looking keys redacted)</summary>",
        f'<pre id="config">{esc(config_yaml)}</pre></details>',
    ])


def to_yaml(values: Mapping) -> str:
    """A config (or any nested mapping) as block YAML for a <pre>; values YAML cannot hold become strings
    (Snakemake's config may hold such types)."""
    plain = json.loads(json.dumps(values, default=str))
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)


def environment_html(check: LockCheck, extra_shown: int = 12) -> str:
    """The running environment against the lock file: matches, or which packages differ and how."""
    if check.lock is None:
        return esc(check.note)
    lock = f"<code>{esc(check.lock)}</code>"
    if check.matches:
        text = f'<span class="pos">matches {lock}</span>: all {check.locked} packages at the locked version'
    else:
        items = ", ".join(f"{esc(name)} {esc(have or 'not installed')} (locked {esc(ver)})"
                          for name, ver, have in check.differ)
        text = f'<span class="neg">differs from {lock}</span> in {len(check.differ)} of {check.locked} packages: {items}'
    if check.extra:
        shown = ", ".join(f"{esc(n)} {esc(v)}" for n, v in check.extra[:extra_shown])
        more = f" and {len(check.extra) - extra_shown} more" if len(check.extra) > extra_shown else ""
        text += f"; also installed, not in the lock: {shown}{more}"
    return text


def page(title: str, lead_html: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (anchor, link text, html)."""
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(h for _, _, h in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{lead_html}<nav>{nav}</nav></header>\n{body}\n"
        "</body></html>\n"
    )
