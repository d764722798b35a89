"""The report's plots (matplotlib, Agg): metric distributions, loss curves, uncertainty, the noise schedule.

Each ``*_figure`` function returns PNG bytes; the caller writes them to a
file (for ``snakemake --report``) and embeds them in ``index.html``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.diffusion.schedule import make_schedule, sampling_schedule  # noqa: E402
from mrisr.io import atomic_path  # noqa: E402
from mrisr.report.tables import BASELINE, gains_over_baseline, method_order, read_train_log  # noqa: E402

DPI = 100
# One colour per method, the same in every plot; the baseline is always grey.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    others = [m for m in methods if m != BASELINE]
    colours = {m: PALETTE[k % len(PALETTE)] for k, m in enumerate(others)}
    colours[BASELINE] = "#7f7f7f"
    return colours


def to_png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


# -- metrics -------------------------------------------------------------------------

def metric_distribution_figure(rows: Sequence[Mapping]) -> bytes:
    """Per-subject PSNR gains over spline (interior and whole mask), interior PSNR and SSIM, one column per method.

    Every subject is a point (spread sideways by a fixed offset so equal values
    stay visible); lines join one subject's points across methods when there
    are few subjects; a box shows the quartiles from five subjects on; a black
    bar marks the mean.
    """
    methods = method_order(rows)
    colours = method_colours(methods)
    subjects = sorted({r["subject"] for r in rows})
    gains = {key: gains_over_baseline(rows, key) for key in ("psnr_interior", "psnr")}
    gain_methods = [m for m in methods if any(k[1] == m for k in gains["psnr"])]
    panels = []
    if gain_methods:
        panels += [("psnr_interior", f"interior PSNR gain over {BASELINE} (dB)", gain_methods),
                   ("psnr", f"whole-mask PSNR gain over {BASELINE} (dB)", gain_methods)]
    panels += [("psnr_interior", "interior PSNR (dB)", methods), ("ssim_interior", "interior SSIM", methods)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    offsets = {s: (k / max(len(subjects) - 1, 1) - 0.5) * 0.24 for k, s in enumerate(subjects)}
    for ax, (key, label, shown) in zip(axes[0], panels):
        values = {}
        is_gain = "gain" in label
        for m in shown:
            if is_gain:
                values[m] = {s: gains[key][(s, m)] for s in subjects if (s, m) in gains[key]}
            else:
                values[m] = {r["subject"]: r[key] for r in rows if r["method"] == m}
        if len(subjects) <= 40:
            for s in subjects:
                pts = [(x, values[m][s]) for x, m in enumerate(shown) if s in values[m]]
                if len(pts) > 1:
                    ax.plot([x + offsets[s] for x, _ in pts], [v for _, v in pts], color="#bbbbbb", lw=0.8, zorder=1)
        for x, m in enumerate(shown):
            v = np.array(list(values[m].values()), dtype=float)
            finite = v[np.isfinite(v)]
            if finite.size >= 5:
                ax.boxplot(finite, positions=[x], widths=0.5, showfliers=False, manage_ticks=False,
                           medianprops={"color": colours[m]}, zorder=2)
            xs = [x + offsets[s] for s in values[m]]
            ax.scatter(xs, v, s=22, color=colours[m], edgecolor="white", linewidth=0.5, zorder=3)
            if finite.size:
                ax.hlines(finite.mean(), x - 0.3, x + 0.3, color="black", lw=1.6, zorder=4)
        if is_gain:
            ax.axhline(0.0, color=colours[BASELINE], lw=1, ls="--", zorder=0)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_xlim(-0.6, len(shown) - 0.4)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{len(subjects)} test subject{'s' if len(subjects) != 1 else ''}: "
                 "one point per subject, black bar = mean", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


# -- training ----------------------------------------------------------------------

def draw_loss(ax: plt.Axes, log: Mapping[str, Sequence[float]], title: str) -> None:
    """Training loss (running mean) and validation loss (EMA weights) against step, log scale."""
    ax.plot(log["step"], log["train_loss"], label="train (running mean)", color="#1f77b4")
    ax.plot(log["step"], log["val_loss"], "o-", ms=3, label="validation (EMA weights)", color="#d62728")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def plot_loss_curve(log_path: str, out_png: str, title: str = "") -> None:
    """One stage's loss curves as a PNG file (written by the train_stage rule)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    draw_loss(ax, read_train_log(log_path), title)
    write_bytes(out_png, to_png(fig))


def loss_figure(logs: Sequence[Mapping[str, Sequence[float]]]) -> bytes:
    """Loss curves of every cascade stage side by side."""
    fig, axes = plt.subplots(1, len(logs), figsize=(4.6 * len(logs), 3.2), squeeze=False)
    for k, (ax, log) in enumerate(zip(axes[0], logs)):
        draw_loss(ax, log, f"stage {k + 1}")
    fig.tight_layout()
    return to_png(fig)


# -- uncertainty ---------------------------------------------------------------------

def uncertainty_figure(per_subject: Mapping[str, Mapping[str, Sequence[float]]], pooled: Mapping[str, Sequence[float]]) -> bytes:
    """Binned RMS error of SR against the predicted sd, one line per test subject and pooled.

    Bins hold equal numbers of brain voxels sorted by predicted sd. On the
    dashed diagonal the error is as large as the sd predicts; above it the
    samples are over-confident, below it under-confident.
    """
    def sd(t: Mapping[str, Sequence[float]]) -> Sequence[float]:  # RMS in the bin (older tables: the mean)
        return t.get("rms_sd") or t["sd"]

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for subject, t in sorted(per_subject.items()):
        ax.plot(sd(t), t["rmse"], "-", color="#9fb7d0", lw=1, alpha=0.8)
    ax.plot(sd(pooled), pooled["rmse"], "o-", color="#1f77b4", ms=4, label=f"pooled ({len(per_subject)} subjects)")
    top = max(max(sd(pooled)), max(pooled["rmse"]), *(max(t["rmse"]) for t in per_subject.values())) * 1.05
    ax.plot([0, top], [0, top], "--", color="#7f7f7f", lw=1, label="error = predicted sd")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="predicted sd (RMS in bin)", ylabel="RMS error of SR in bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return to_png(fig)


# -- the noise schedule --------------------------------------------------------------------

def schedule_curves(diffusion: Mapping, sampling: SamplingOptions) -> dict:
    """ᾱ_t, the noise variance (1 - ᾱ_t)·noise_var and the SNR of the configured schedule and of a comparison.

    The comparison is the seed paper's literal schedule (or cosine when the
    seed's is the one configured). ``sampled_t`` are the timesteps t (1..T)
    the configured sampler visits (``diffusion.schedule.sampling_schedule``).
    """
    T, noise_var = int(diffusion["num_timesteps"]), float(diffusion["noise_var"])
    configured = str(diffusion["schedule"])
    names = [configured, "seed" if configured != "seed" else "cosine"]
    t = np.arange(1, T + 1)
    curves = {}
    for name in names:
        abar = make_schedule(name, T, noise_var).alphas_cumprod
        with np.errstate(divide="ignore"):
            snr = abar / ((1.0 - abar) * noise_var)
        curves[name] = {"alphas_cumprod": abar, "noise_variance": (1.0 - abar) * noise_var, "snr": snr}
    spaced = sampling_schedule(diffusion, sampling)
    return {
        "t": t, "noise_var": noise_var, "configured": configured, "curves": curves,
        "sampled_t": np.asarray(spaced.timestep_map) + 1,
    }


def noise_schedule_figure(c: Mapping) -> bytes:
    """ᾱ_t, the noise variance and the signal-to-noise ratio against t (``schedule_curves``'s output)."""
    t, configured = c["t"], c["configured"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name, curve in c["curves"].items():
        style = {"lw": 2.0, "ls": "-"} if name == configured else {"lw": 1.3, "ls": "--"}
        label = f"{name} (configured)" if name == configured else f"{name} (for comparison)"
        axes[0].plot(t, curve["alphas_cumprod"], label=label, **style)
        axes[1].plot(t, curve["noise_variance"], label=label, **style)
        axes[2].plot(t, curve["snr"], label=label, **style)
    axes[1].axhline(c["noise_var"], color="black", lw=0.8, ls=":", label=f"noise_var = {c['noise_var']:g}")
    sampled = c["sampled_t"]
    if len(sampled) < len(t):
        snr = c["curves"][configured]["snr"][sampled - 1]
        axes[2].plot(sampled, snr, "k|", ms=10, label=f"{len(sampled)} sampled steps")
    axes[0].set(title="ᾱ_t (signal kept)", xlabel="t", ylabel="ᾱ_t")
    axes[1].set(title="noise variance (1 − ᾱ_t)·noise_var", xlabel="t", ylabel="variance")
    axes[2].set(title="signal-to-noise ratio ᾱ_t / ((1 − ᾱ_t)·noise_var)", xlabel="t", ylabel="SNR", yscale="log")
    # The SNR of the configured schedule sets the range; the comparison may fall far below it (to 0).
    snr = c["curves"][configured]["snr"]
    positive = snr[np.isfinite(snr) & (snr > 0)]
    axes[2].set_ylim(max(positive.min() / 10, 1e-12), positive.max() * 10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"T = {len(t)}, noise_var = {c['noise_var']:g}", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def first_t_below(values: np.ndarray, threshold: float) -> int | None:
    """The first t (1-based) where ``values`` drops below ``threshold``; None if it never does."""
    below = np.flatnonzero(np.asarray(values) < threshold)
    return int(below[0]) + 1 if below.size else None
