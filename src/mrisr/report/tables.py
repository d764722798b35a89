"""The numbers of the report: metric summaries, PSNR gains, training and run-time tables.

Pure functions of the workflow's tables (``metrics.tsv``, ``train_log.tsv``,
Snakemake's ``benchmark:`` files); no plotting and no HTML, so the numbers
the report shows can be checked against their sources.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mrisr.metrics import SCORES

BASELINE = "spline"


def method_order(rows: Iterable[Mapping]) -> list[str]:
    """The methods in ``rows``: the spline baseline first, the others in order of first appearance."""
    seen: list[str] = []
    for row in rows:
        if row["method"] not in seen:
            seen.append(row["method"])
    return sorted(seen, key=lambda m: (m != BASELINE, seen.index(m)))


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (n - 1; None for n < 2), median, min and max of n values."""

    n: int
    mean: float
    sd: float | None
    median: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        if not values:
            raise ValueError("no values to summarise")
        values = [float(v) for v in values]
        sd = statistics.stdev(values) if len(values) > 1 and all(map(math.isfinite, values)) else None
        return cls(len(values), statistics.fmean(values), sd, statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class MethodSummary:
    """Aggregates of one method over the test subjects.

    ``gain`` is PSNR(method) - PSNR(spline) in the brain mask, ``gain_interior``
    the same in the mask's interior (``metrics.interior``); ``wins`` and
    ``wins_interior`` count the subjects where that gain is positive.
    """

    method: str
    psnr: Stats
    ssim: Stats
    gain: Stats | None  # None for the baseline itself or when no subject has a spline row
    wins: int
    psnr_interior: Stats
    ssim_interior: Stats
    hfen: Stats
    gain_interior: Stats | None
    wins_interior: int


def gains_over_baseline(rows: Sequence[Mapping], key: str = "psnr") -> dict[tuple[str, str], float]:
    """{(subject, method): key(method) - key(spline)} for every non-baseline row with a baseline row."""
    baseline = {r["subject"]: r[key] for r in rows if r["method"] == BASELINE}
    return {
        (r["subject"], r["method"]): r[key] - baseline[r["subject"]]
        for r in rows
        if r["method"] != BASELINE and r["subject"] in baseline
    }


def summarise(rows: Sequence[Mapping]) -> list[MethodSummary]:
    """One ``MethodSummary`` per method of ``rows`` (dicts with subject, method and ``metrics.SCORES``)."""
    keys = [(r["subject"], r["method"]) for r in rows]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"metrics table has repeated (subject, method) rows: {dup}")
    gains = {key: gains_over_baseline(rows, key) for key in ("psnr", "psnr_interior")}
    out = []
    for method in method_order(rows):
        mine = [r for r in rows if r["method"] == method]
        g = {key: [gains[key][(r["subject"], method)] for r in mine if (r["subject"], method) in gains[key]]
             for key in gains}
        stats = {key: Stats.of([r.get(key, float("nan")) for r in mine]) for key in SCORES}
        out.append(MethodSummary(
            method=method, **stats,
            gain=Stats.of(g["psnr"]) if g["psnr"] else None, wins=sum(1 for v in g["psnr"] if v > 0),
            gain_interior=Stats.of(g["psnr_interior"]) if g["psnr_interior"] else None,
            wins_interior=sum(1 for v in g["psnr_interior"] if v > 0),
        ))
    return out


def data_ranges(rows: Sequence[Mapping]) -> list[float]:
    """The distinct data ranges the metrics were computed with (one, in a consistent table)."""
    return sorted({float(r["data_range"]) for r in rows})


# -- training logs -------------------------------------------------------------

@dataclass(frozen=True)
class TrainingSummary:
    """The end of one stage's ``train_log.tsv``."""

    stage: int
    steps: int
    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    best_val_step: int
    seconds: float  # the trainer's own clock at the last log line


def read_train_log(path: str | Path) -> dict[str, list[float]]:
    """``train_log.tsv`` as {column: values}: step, train_loss, val_loss, lr, seconds."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: training log has no rows")
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def summarise_training(log: Mapping[str, Sequence[float]], stage: int) -> TrainingSummary:
    best = min(range(len(log["val_loss"])), key=lambda k: log["val_loss"][k])
    return TrainingSummary(
        stage=stage,
        steps=int(log["step"][-1]),
        final_train_loss=log["train_loss"][-1],
        final_val_loss=log["val_loss"][-1],
        best_val_loss=log["val_loss"][best],
        best_val_step=int(log["step"][best]),
        seconds=log["seconds"][-1] if "seconds" in log else float("nan"),
    )


# -- Snakemake benchmark files ----------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """One job's resources from its Snakemake ``benchmark:`` file (mean over repeats)."""

    rule: str
    job: str  # the file's stem: stage1, demo03, ...
    seconds: float  # wall clock
    cpu_seconds: float
    max_rss_mb: float  # peak resident memory, MB (NaN where not measured)
    repeats: int


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")  # Snakemake writes "-" or "NA" where it could not measure


def read_benchmark(path: str | Path) -> Cost:
    """A Snakemake benchmark TSV (columns s, h:m:s, max_rss, ..., cpu_time) at results/benchmarks/<rule>/<job>.tsv.

    A job's name may have folders of its own: a compared model's training is
    ``train_stage/compare/<name>/stage1``, its job ``compare/<name>/stage1``.
    """
    path = Path(path)
    parts = path.with_suffix("").parts
    root = len(parts) - 1 - parts[::-1].index("benchmarks") if "benchmarks" in parts[:-2] else len(parts) - 2
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    mean = lambda key: statistics.fmean(_number(r.get(key)) for r in rows)  # noqa: E731
    rss = [v for v in (_number(r.get("max_rss")) for r in rows) if math.isfinite(v)]
    return Cost(
        rule=parts[root + 1], job="/".join(parts[root + 2:]), seconds=mean("s"), cpu_seconds=mean("cpu_time"),
        max_rss_mb=max(rss) if rss else float("nan"), repeats=len(rows),
    )


def with_training_peaks(costs: Sequence[Cost], logs: Sequence[Mapping[str, Sequence[float]]]) -> list[Cost]:
    """The costs, with each main training job's peak memory from its train log (``peak_rss_mb``, the
    kernel's high-water mark VmHWM) where the log has it: Snakemake's ``benchmark:`` samples memory
    too sparsely to see a short job's peak."""
    peaks = {f"stage{k + 1}": max(log["peak_rss_mb"]) for k, log in enumerate(logs) if log.get("peak_rss_mb")}
    return [replace(c, max_rss_mb=peaks[c.job]) if c.rule == "train_stage" and c.job in peaks else c for c in costs]


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss (or m:ss under an hour)."""
    if not math.isfinite(seconds):
        return "n/a"
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# -- uncertainty -------------------------------------------------------------------

def read_calibration(path: str | Path) -> dict[str, list[float]]:
    """A ``{subject}_calibration.tsv`` (``pipeline.evaluate``) as {column: values}, bins in order of sd."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    needed = {"sd", "rmse", "voxels"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{path}: not a calibration table (needs columns {', '.join(sorted(needed))})")
    return {key: [float(r[key]) for r in rows] for key in ("sd", "rms_sd", "rmse", "mae", "voxels") if key in rows[0]}


def pooled_calibration(tables_: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Bin k of every subject pooled: voxel-weighted mean sd, root of the pooled mean squared sd (tables written
    before ``rms_sd`` was a column: the mean sd's) and root of the pooled mean squared error."""
    n_bins = min(len(t["sd"]) for t in tables_.values())
    out: dict[str, list[float]] = {"sd": [], "rms_sd": [], "rmse": []}

    def pooled(k: int, key: str, weights: Sequence[float], square: bool) -> float:
        values = [t[key][k] if key in t else t["sd"][k] for t in tables_.values()]
        if square:
            return math.sqrt(sum(v * v * n for v, n in zip(values, weights)) / sum(weights))
        return sum(v * n for v, n in zip(values, weights)) / sum(weights)

    for k in range(n_bins):
        w = [t["voxels"][k] for t in tables_.values()]
        out["sd"].append(pooled(k, "sd", w, square=False))
        out["rms_sd"].append(pooled(k, "rms_sd", w, square=True))
        out["rmse"].append(pooled(k, "rmse", w, square=True))
    return out
