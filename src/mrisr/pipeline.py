"""One function per workflow stage, from files to files.

The Snakemake scripts in ``workflow/scripts`` are thin adapters that call
these with plain arguments; tests call them directly. Every output is written
atomically (``io.save_volume`` / ``io.atomic_path``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mrisr import metrics
from mrisr.data.degrade import downsample, downsample_affine, upsample, upsample_affine
from mrisr.data.demo import demo_subject_index, make_demo_subject
from mrisr.data.skullstrip import skullstrip_with_mask
from mrisr.data.splits import read_splits, split_subjects, write_splits
from mrisr.diffusion.cascade import stage_grids, stage_pair, total_factor
from mrisr.io import atomic_path, load_volume, save_volume

log = logging.getLogger("mrisr")

METRIC_COLUMNS = ("subject", "method", "psnr", "ssim", "data_range")


def fetch_demo(subject: str, seed: int, voxel_size_mm: float, out_t1: str, out_mask: str) -> None:
    """Synthesise one demo subject (``data.demo``) as raw T1 and brain mask NIfTIs."""
    sub = make_demo_subject(demo_subject_index(subject), seed=seed, voxel_size_mm=voxel_size_mm)
    save_volume(out_mask, sub.mask, sub.affine, dtype=np.uint8)
    save_volume(out_t1, sub.t1, sub.affine)
    log.info("%s: demo subject %s, shape %s, %.1f mm", subject, out_t1, sub.t1.shape, voxel_size_mm)


def skullstrip(
    raw_t1: str, raw_mask: str, out_t1: str, out_mask: str,
    margin_mm: float, multiple: int, percentile: float,
) -> None:
    """Apply the brain mask, crop to the brain (sides divisible by ``multiple``), normalise to [0, 1]."""
    t1, affine = load_volume(raw_t1)
    mask, mask_affine = load_volume(raw_mask)
    if mask.shape != t1.shape or not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError(f"{raw_mask}: mask grid {mask.shape} does not match {raw_t1} {t1.shape}")
    out = skullstrip_with_mask(t1, mask, affine, margin_mm, multiple, percentile)
    save_volume(out_mask, out.mask, out.affine, dtype=np.uint8)
    save_volume(out_t1, out.t1, out.affine)
    log.info("%s -> %s: cropped to %s, brain %.1f %% of the box", raw_t1, out_t1, out.t1.shape, 100 * out.mask.mean())


def make_lr(hr_path: str, out_path: str, factor: int, order: int, antialias: bool) -> None:
    """Spline-downsample the HR volume by ``factor``; the LR file carries the coarse affine."""
    hr, affine = load_volume(hr_path)
    lr = downsample(hr, factor, order, antialias)
    save_volume(out_path, lr, downsample_affine(affine, factor))
    log.info("%s -> %s: x%d, order %d, %s -> %s", hr_path, out_path, factor, order, hr.shape, lr.shape)


def split(subjects: Sequence[str], seed: int, val_fraction: float, test_fraction: float, out_path: str) -> None:
    """Write the seeded subject-level split (``data.splits``)."""
    assignment = split_subjects(subjects, seed, val_fraction, test_fraction)
    write_splits(out_path, assignment)
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "val", "test")}
    log.info("split %d subjects: %s", len(assignment), counts)


def train(
    hr_paths: Mapping[str, str],
    lr_paths: Mapping[str, str],
    mask_paths: Mapping[str, str],
    splits_path: str,
    config: dict,
    stage: int,
    out_checkpoint: str,
    out_log: str,
    out_plot: str,
    resume_path: str | None = None,
    checkpoint_every: int = 0,
    nproc: int = 1,
    threads: int = 1,
    log_file: str | None = None,
    world=None,
) -> None:
    """Train one cascade stage on the train subjects, validating on the val subjects.

    With ``nproc`` > 1 the stage is trained by that many DDP workers started
    with torchrun (``mrisr.distributed``; ``log_file`` receives the first
    worker's log, each worker uses ``threads // nproc`` CPU threads); each
    worker calls this function again with its ``world``. Training resumes from
    ``resume_path`` and checkpoints there (``mrisr.training.train_stage``).
    """
    from mrisr.report import plot_loss_curve
    from mrisr.resume import StopSignals
    from mrisr.training import train_stage

    if world is None and nproc > 1:
        from mrisr.distributed import launch

        kwargs = dict(
            hr_paths=dict(hr_paths), lr_paths=dict(lr_paths), mask_paths=dict(mask_paths),
            splits_path=splits_path, config=config, stage=stage, out_checkpoint=out_checkpoint,
            out_log=out_log, out_plot=out_plot, resume_path=resume_path, checkpoint_every=checkpoint_every,
        )
        launch(nproc, kwargs, log_file, threads)
        return

    assignment = read_splits(splits_path)
    factors = config["cascade"]["factors"]
    order, antialias = int(config["degrade"]["order"]), bool(config["degrade"]["antialias"])

    def pairs(split_name: str):
        out = []
        for subject in sorted(s for s, v in assignment.items() if v == split_name):
            hr, _ = load_volume(hr_paths[subject])
            lr, _ = load_volume(lr_paths[subject])
            mask, _ = load_volume(mask_paths[subject])
            out.append(stage_pair(hr, lr, mask > 0, factors, stage, order, antialias))
        return out

    # Signals are caught from the start: one during loading stops training after
    # its first step; one after training waits the second the plot takes, so a
    # trained stage is never lost to a signal that came just too late.
    with StopSignals() as stop:
        result = train_stage(
            pairs("train"), pairs("val"), config, stage, out_checkpoint, out_log,
            device=config["device"], log=log.info, resume_path=resume_path,
            checkpoint_every=checkpoint_every, world=world, stop=stop,
        )
        if world is None or world.is_main:
            plot_loss_curve(out_log, out_plot, title=f"stage {stage + 1}")
            log.info("stage %d trained: %d steps in %.0f s, val loss %.5f",
                     stage, result.steps, result.seconds, result.final_val_loss)


def super_resolve(
    lr_path: str, checkpoints: Sequence[str], sampling: Mapping, seed: int,
    out_sr: str, out_stages: Sequence[str], device: str = "auto",
) -> None:
    """Cascaded super-resolution of one LR file; writes every stage's output and the final SR."""
    from mrisr.inference import super_resolve as run

    lr, affine = load_volume(lr_path)
    outputs = run(lr, checkpoints, dict(sampling), seed=seed, device=device, log=log.info)
    if len(out_stages) != len(outputs):
        raise ValueError(f"{len(out_stages)} stage outputs named for a {len(outputs)}-stage cascade")
    for path, volume in zip(out_stages, outputs):
        factor = round(volume.shape[0] / lr.shape[0])
        save_volume(path, volume, upsample_affine(affine, factor))
    factor = round(outputs[-1].shape[0] / lr.shape[0])
    save_volume(out_sr, outputs[-1], upsample_affine(affine, factor))
    log.info("%s -> %s: x%d, %s -> %s", lr_path, out_sr, factor, lr.shape, outputs[-1].shape)


def baseline(lr_path: str, factor: int, order: int, out_path: str) -> None:
    """Spline interpolation of the LR volume onto the HR grid (the baseline SR is measured against)."""
    lr, affine = load_volume(lr_path)
    up = np.clip(upsample(lr, factor, order), 0.0, 1.0)
    save_volume(out_path, up, upsample_affine(affine, factor))
    log.info("%s -> %s: spline order %d, x%d", lr_path, out_path, order, factor)


def evaluate(subject: str, hr_path: str, mask_path: str, methods: Mapping[str, str], out_path: str) -> None:
    """PSNR and SSIM of every method's volume against HR inside the brain mask (``metrics``)."""
    hr, hr_affine = load_volume(hr_path)
    mask, _ = load_volume(mask_path)
    rows = []
    for method, path in methods.items():
        estimate, affine = load_volume(path)
        if estimate.shape != hr.shape or not np.allclose(affine, hr_affine, atol=1e-3):
            raise ValueError(f"{path}: grid {estimate.shape} does not match the HR grid {hr.shape} of {hr_path}")
        rows.append({
            "subject": subject,
            "method": method,
            "psnr": metrics.psnr_in_mask(hr, estimate, mask > 0),
            "ssim": metrics.ssim_in_mask(hr, estimate, mask > 0),
            "data_range": metrics.DATA_RANGE,
        })
        log.info("%s %s: PSNR %.3f dB, SSIM %.4f", subject, method, rows[-1]["psnr"], rows[-1]["ssim"])
    write_metrics(out_path, rows)


def write_metrics(path: str, rows: Sequence[Mapping]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, METRIC_COLUMNS, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})


def read_metrics(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for row in rows:
        for key in ("psnr", "ssim", "data_range"):
            row[key] = float(row[key])
    return rows


def collect_metrics(paths: Sequence[str], out_path: str) -> None:
    """Concatenate per-subject metric tables into one."""
    rows = [row for p in paths for row in read_metrics(p)]
    write_metrics(out_path, rows)


def report(
    metrics_path: str,
    splits_path: str,
    config: dict,
    train_logs: Sequence[str],
    figure_subject: str,
    figure_volumes: Mapping[str, str],
    out_html: str,
) -> None:
    """Write the self-contained HTML report."""
    from mrisr.report import build_report

    build_report(
        metrics_rows=read_metrics(metrics_path),
        splits=read_splits(splits_path),
        config=config,
        train_logs=list(train_logs),
        figure_subject=figure_subject,
        figure_volumes=dict(figure_volumes),
        out_html=out_html,
    )
    log.info("report written to %s", out_html)


def stage_output_factors(factors: Sequence[int]) -> list[int]:
    """How many times finer than LR each stage's output is."""
    total = total_factor(factors)
    return [total // g.output_factor for g in stage_grids(factors)]


def config_json(config: Mapping) -> str:
    return json.dumps(config, indent=2, sort_keys=True, default=str)
