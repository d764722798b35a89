"""One function per workflow stage, from files to files.

The Snakemake scripts in ``workflow/scripts`` are thin adapters that call
these with plain arguments; tests call them directly. Every output is written
atomically (``io.save_volume`` / ``io.atomic_path``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from mrisr import metrics
from mrisr.data.degrade import downsample, downsample_affine, upsample, upsample_affine
from mrisr.data.brain_extraction import extract_brain
from mrisr.data.demo import demo_subject_index, make_demo_subject
from mrisr.data.skullstrip import skullstrip_with_mask
from mrisr.data.splits import read_splits, split_subjects, write_splits
from mrisr.diffusion.cascade import stage_pair
from mrisr.io import atomic_path, check_contrast, load_volume, save_volume, voxel_sizes

log = logging.getLogger("mrisr")

METRIC_COLUMNS = ("subject", "method", "psnr", "ssim", "data_range")


def fetch(
    subject: str,
    source: str,
    out_t1: str,
    out_mask: str | None = None,
    settings: Mapping[str, Any] | None = None,
    local_t1: str | None = None,
    local_mask: str | None = None,
) -> None:
    """Fetch one subject's raw T1 (and the source's brain mask, if ``out_mask``) from ``source``.

    ``settings`` is the source's config section (``demo`` or ``hcp``);
    ``local_t1``/``local_mask`` are the files of a local subject.
    """
    settings = dict(settings or {})
    if source == "demo":
        fetch_demo(subject, settings["seed"], settings["voxel_size_mm"], out_t1, out_mask)
    elif source == "hcp":
        from mrisr.data.hcp import S3Settings, fetch_subject

        outputs = {"t1": out_t1} | ({"mask": out_mask} if out_mask else {})
        fetch_subject(subject, S3Settings.from_config(settings), outputs)
    elif source == "local":
        if local_t1 is None:
            raise ValueError(f"{subject}: source local needs the subject's T1 file")
        copy_volume(local_t1, out_t1)
        if out_mask:
            if local_mask is None:
                raise ValueError(f"{subject}: a mask output was asked for but the subject has no mask file")
            copy_volume(local_mask, out_mask)
        log.info("%s: %s -> %s%s", subject, local_t1, out_t1, f", mask {local_mask}" if out_mask else "")
    else:
        raise ValueError(f"unknown source {source!r}; allowed: demo, hcp, local")


def fetch_demo(subject: str, seed: int, voxel_size_mm: float, out_t1: str, out_mask: str | None) -> None:
    """Synthesise one demo subject (``data.demo``) as raw T1 and brain mask NIfTIs."""
    sub = make_demo_subject(demo_subject_index(subject), seed=seed, voxel_size_mm=voxel_size_mm)
    if out_mask:
        save_volume(out_mask, sub.mask, sub.affine, dtype=np.uint8)
    save_volume(out_t1, sub.t1, sub.affine)
    log.info("%s: demo subject %s, shape %s, %.1f mm", subject, out_t1, sub.t1.shape, voxel_size_mm)


def copy_volume(src: str, dest: str) -> None:
    """Copy a 3D NIfTI to ``dest`` (.nii.gz) atomically; the source is only read.

    A .nii.gz file is copied byte for byte; a .nii file is rewritten
    compressed with its header kept. Either way the volume is checked first.
    """
    import nibabel as nib

    load_volume(src)  # a clear error naming the file if it is not a usable 3D NIfTI
    with atomic_path(dest) as tmp:
        if str(src).endswith(".nii.gz"):
            shutil.copyfile(src, tmp)
        else:
            nib.save(nib.load(src), str(tmp))


def skullstrip(
    raw_t1: str, out_t1: str, out_mask: str,
    margin_mm: float, multiple: int, percentile: float,
    raw_mask: str | None = None,
) -> None:
    """Mask the brain, crop to it (sides divisible by ``multiple``), normalise to [0, 1].

    The mask is the source's (``raw_mask``) when it ships one, otherwise
    estimated from the T1 (``data.brain_extraction``). Either way it is written
    to ``out_mask``, beside the stripped volume, on the same cropped grid.
    """
    t1, affine = load_volume(raw_t1)
    check_contrast(t1, raw_t1)
    if raw_mask is not None:
        mask, mask_affine = load_volume(raw_mask)
        if mask.shape != t1.shape or not np.allclose(mask_affine, affine, atol=1e-3):
            raise ValueError(f"{raw_mask}: mask grid {mask.shape} does not match {raw_t1} {t1.shape}")
        log.info("%s: brain mask from the source, %s", raw_t1, raw_mask)
    else:
        found = extract_brain(t1, affine)
        mask = found.mask
        log.info(
            "%s: brain mask estimated: %.0f mL, brain intensity %.4g, separated from the scalp at %.0f mm erosion",
            raw_t1, found.volume_ml, found.brain_intensity, found.erosion_mm,
        )
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

    # The LR voxel size seen in training travels with the checkpoint, so that
    # `mrisr super-resolve` can warn about scans of another resolution.
    first = sorted(s for s, v in assignment.items() if v == "train")[0]
    lr_voxel = voxel_sizes(load_volume(lr_paths[first])[1])
    config = {**config, "data": {"lr_voxel_size_mm": [float(v) for v in lr_voxel]}}
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
    out_sr: str, out_stages: Sequence[str], device: str = "auto", out_sd: str | None = None,
) -> None:
    """Cascaded super-resolution of one LR file; writes every stage's output and the final SR.

    With ``out_sd`` (and ``sampling["n_samples"]`` > 1) the per-voxel standard
    deviation of the final stage's samples is written too.
    """
    from mrisr.inference import super_resolve as run

    lr, affine = load_volume(lr_path)
    outputs = run(lr, checkpoints, dict(sampling), seed=seed, device=device, log=log.info)
    if len(out_stages) != len(outputs):
        raise ValueError(f"{len(out_stages)} stage outputs named for a {len(outputs)}-stage cascade")
    for path, out in zip(out_stages, outputs):
        factor = round(out.mean.shape[0] / lr.shape[0])
        save_volume(path, out.mean, upsample_affine(affine, factor))
    final = outputs[-1]
    factor = round(final.mean.shape[0] / lr.shape[0])
    if out_sd is not None:
        if final.sd is None:
            raise ValueError("an uncertainty map needs sampling.n_samples > 1")
        save_volume(out_sd, final.sd, upsample_affine(affine, factor))
    save_volume(out_sr, final.mean, upsample_affine(affine, factor))
    log.info("%s -> %s: x%d, %s -> %s", lr_path, out_sr, factor, lr.shape, final.mean.shape)


def baseline(lr_path: str, factor: int, order: int, out_path: str) -> None:
    """Spline interpolation of the LR volume onto the HR grid (the baseline SR is measured against)."""
    lr, affine = load_volume(lr_path)
    up = np.clip(upsample(lr, factor, order), 0.0, 1.0)
    save_volume(out_path, up, upsample_affine(affine, factor))
    log.info("%s -> %s: spline order %d, x%d", lr_path, out_path, order, factor)


def evaluate(
    subject: str, hr_path: str, mask_path: str, methods: Mapping[str, str], out_path: str,
    sd_path: str | None = None, out_calibration: str | None = None,
) -> None:
    """PSNR and SSIM of every method's volume against HR inside the brain mask (``metrics``).

    With ``sd_path`` (the SR samples' standard deviation) and
    ``out_calibration``, also the binned error-versus-uncertainty table of SR.
    """
    hr, hr_affine = load_volume(hr_path)
    mask, _ = load_volume(mask_path)
    rows, volumes = [], {}
    for method, path in methods.items():
        estimate, affine = load_volume(path)
        if estimate.shape != hr.shape or not np.allclose(affine, hr_affine, atol=1e-3):
            raise ValueError(f"{path}: grid {estimate.shape} does not match the HR grid {hr.shape} of {hr_path}")
        volumes[method] = estimate
        rows.append({
            "subject": subject,
            "method": method,
            "psnr": metrics.psnr_in_mask(hr, estimate, mask > 0),
            "ssim": metrics.ssim_in_mask(hr, estimate, mask > 0),
            "data_range": metrics.DATA_RANGE,
        })
        log.info("%s %s: PSNR %.3f dB, SSIM %.4f", subject, method, rows[-1]["psnr"], rows[-1]["ssim"])
    if sd_path is not None and out_calibration is not None:
        sd, _ = load_volume(sd_path)
        table = metrics.error_vs_uncertainty(hr, volumes["sr"], sd, mask > 0)
        with atomic_path(out_calibration) as tmp:
            with open(tmp, "w") as fh:
                fh.write("subject\tbin\tsd\trmse\tmae\tvoxels\n")
                for k, r in enumerate(table):
                    fh.write(f"{subject}\t{k}\t{r['sd']:.6g}\t{r['rmse']:.6g}\t{r['mae']:.6g}\t{r['voxels']}\n")
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


def plot_slices(
    subject: str, lr_path: str, spline_path: str, sr_path: str, hr_path: str, mask_path: str,
    out_panels: str, out_sweep: str,
) -> None:
    """One test subject's slice panels and axial sweep for the report (``report.slice_figures``)."""
    from mrisr.report import slice_figures

    slice_figures(lr_path, spline_path, sr_path, hr_path, mask_path, subject, out_panels, out_sweep)
    log.info("%s: slice panels %s, sweep %s", subject, out_panels, out_sweep)


def report(
    metrics_path: str,
    splits_path: str,
    config: dict,
    train_logs: Sequence[str],
    benchmark_files: Sequence[str],
    slice_files: Mapping[str, tuple[str, str]],
    outputs: Mapping[str, str],
    repo_dir: str | None = None,
    calibration_files: Sequence[str] = (),
) -> None:
    """Write the self-contained HTML report and the figures and tables it embeds.

    ``outputs`` names the files: html, metrics_png, loss_png, schedule_png,
    summary_tsv, cost_tsv (``report.build_report``).
    """
    from mrisr.report import build_report

    timings = build_report(
        metrics_rows=read_metrics(metrics_path),
        splits=read_splits(splits_path),
        config=config,
        train_logs=list(train_logs),
        benchmark_files=list(benchmark_files),
        slice_files=dict(slice_files),
        out_html=outputs["html"],
        out_metrics_png=outputs["metrics_png"],
        out_loss_png=outputs["loss_png"],
        out_schedule_png=outputs["schedule_png"],
        out_summary_tsv=outputs["summary_tsv"],
        out_cost_tsv=outputs["cost_tsv"],
        repo_dir=repo_dir,
        calibration_files=list(calibration_files),
    )
    size = Path(outputs["html"]).stat().st_size
    log.info("report written to %s: %.2f MB in %.1f s", outputs["html"], size / 1e6, sum(timings.values()))
