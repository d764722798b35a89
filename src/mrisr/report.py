"""The self-contained HTML report: metrics, loss curves and slice panels.

Figures are rendered with matplotlib (Agg) to PNG and embedded as base64 data
URIs, so ``index.html`` is one file that opens offline.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import platform
import statistics
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import mrisr  # noqa: E402
from mrisr.io import atomic_path, load_volume  # noqa: E402
from mrisr.metrics import DATA_RANGE  # noqa: E402


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read_log(path: str) -> dict[str, list[float]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {k: [float(r[k]) for r in rows] for k in ("step", "train_loss", "val_loss")}


def plot_loss_curve(log_path: str, out_png: str, title: str = "") -> None:
    """Training and validation loss against step, log scale, as a PNG file."""
    curve = _read_log(log_path)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(curve["step"], curve["train_loss"], label="train (running mean)")
    ax.plot(curve["step"], curve["val_loss"], label="validation (EMA weights)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.legend()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _loss_figure(train_logs: Sequence[str]) -> str:
    fig, axes = plt.subplots(1, len(train_logs), figsize=(5 * len(train_logs), 3.2), squeeze=False)
    for k, (ax, path) in enumerate(zip(axes[0], train_logs)):
        curve = _read_log(path)
        ax.plot(curve["step"], curve["train_loss"], label="train (running mean)")
        ax.plot(curve["step"], curve["val_loss"], label="validation (EMA weights)")
        ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"stage {k + 1}")
        ax.legend()
    return _png(fig)


def _slice_figure(volumes: Mapping[str, np.ndarray]) -> str:
    """Central slices in three orientations; columns LR (nearest), spline, SR, HR, |SR - HR|."""
    hr = volumes["HR"]
    columns = [name for name in ("LR", "spline", "SR", "HR") if name in volumes]
    fig, axes = plt.subplots(3, len(columns) + 1, figsize=(2.6 * (len(columns) + 1), 8))
    centre = [s // 2 for s in hr.shape]
    for row, axis in enumerate(range(3)):
        for col, name in enumerate(columns + ["|SR - HR|"]):
            vol = np.abs(volumes["SR"] - hr) if name == "|SR - HR|" else volumes[name]
            if name == "LR":  # nearest-neighbour onto the HR grid, to show its voxels
                f = hr.shape[0] // vol.shape[0]
                vol = np.repeat(np.repeat(np.repeat(vol, f, 0), f, 1), f, 2)
            index = [slice(None)] * 3
            index[axis] = centre[axis]
            img = np.rot90(vol[tuple(index)])
            ax = axes[row, col]
            if name == "|SR - HR|":
                ax.imshow(img, cmap="magma", vmin=0, vmax=0.25 * DATA_RANGE)
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=DATA_RANGE)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    return _png(fig)


def _summary(rows: Sequence[Mapping]) -> list[dict]:
    out = []
    for method in sorted({r["method"] for r in rows}):
        psnr = [r["psnr"] for r in rows if r["method"] == method]
        ssim = [r["ssim"] for r in rows if r["method"] == method]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        out.append({
            "method": method, "n": len(psnr),
            "psnr": f"{statistics.mean(psnr):.2f} &plusmn; {sd(psnr):.2f}",
            "psnr_median": f"{statistics.median(psnr):.2f}",
            "ssim": f"{statistics.mean(ssim):.4f} &plusmn; {sd(ssim):.4f}",
            "ssim_median": f"{statistics.median(ssim):.4f}",
        })
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:.92em}
"""


def build_report(
    metrics_rows: Sequence[Mapping],
    splits: Mapping[str, str],
    config: Mapping,
    train_logs: Sequence[str],
    figure_subject: str,
    figure_volumes: Mapping[str, str],
    out_html: str,
) -> None:
    """Write ``out_html``: provenance, metric tables, loss curves, slice panels."""
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "val", "test")}
    summary = _summary(metrics_rows)
    per_subject = []
    by_key = {(r["subject"], r["method"]): r for r in metrics_rows}
    for subject in sorted({r["subject"] for r in metrics_rows}):
        for method in sorted({r["method"] for r in metrics_rows}):
            r = by_key.get((subject, method))
            if r is not None:
                gain = ""
                base = by_key.get((subject, "spline"))
                if base is not None and method != "spline":
                    gain = f"{r['psnr'] - base['psnr']:+.2f}"
                per_subject.append([html.escape(subject), html.escape(method), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", gain])

    volumes = {name: load_volume(path)[0] for name, path in figure_volumes.items()}
    factors = config["cascade"]["factors"]
    sampling = config["sampling"]
    parts = [
        f"<h1>mrisr report</h1>",
        f'<p class="note">mrisr {html.escape(mrisr.__version__)}, Python {platform.python_version()}, '
        f"generated {dt.datetime.now().isoformat(timespec='seconds')}. Data source: "
        f"<b>{html.escape(str(config['source']))}</b>; subjects: {counts['train']} train, "
        f"{counts['val']} validation, {counts['test']} test (split by subject).</p>",
        "<h2>Metrics on the test subjects</h2>",
        f'<p class="note">PSNR and SSIM inside the brain mask, intensities normalised so the brain\'s '
        f"99.5th percentile is 1 and clipped to [0, 1]: data range = {DATA_RANGE:g}. "
        f"Scale factor x{int(np.prod(factors))} (cascade {' x '.join(str(f) for f in factors)}); "
        f"SR sampled with {html.escape(str(sampling['method']))}, {sampling['steps']} steps. "
        f"<i>spline</i>: order-{config['degrade']['order']} spline interpolation of the LR volume.</p>",
        _table(["method", "n", "PSNR (dB) mean &plusmn; sd", "PSNR median", "SSIM mean &plusmn; sd", "SSIM median"],
               [[s["method"], s["n"], s["psnr"], s["psnr_median"], s["ssim"], s["ssim_median"]] for s in summary],
               "summary"),
        "<h3>Per subject</h3>",
        _table(["subject", "method", "PSNR (dB)", "SSIM", "PSNR gain over spline (dB)"], per_subject, "per-subject"),
        f"<h2>Slices: {html.escape(figure_subject)}</h2>",
        f'<img alt="slice panels" src="{_slice_figure(volumes)}">',
        '<p class="note">Central axial, coronal and sagittal slices on one intensity scale [0, 1]; '
        "the error map is scaled to [0, 0.25].</p>",
        "<h2>Training</h2>",
        f'<img alt="loss curves" src="{_loss_figure(train_logs)}">',
    ]
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mrisr report</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
