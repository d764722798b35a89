"""One function per workflow stage, from files to files.

The Snakemake scripts in ``workflow/scripts`` are thin adapters that call
these with plain arguments; tests call them directly. Every output is written
atomically (``io.save_volume`` / ``io.atomic_path``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mrisr import metrics
from mrisr.config import SamplingOptions
from mrisr.data.brain_extraction import BrainExtractionError, extract_brain
from mrisr.data.degrade import (
    Degradation, downsample_affine, factor_label, grid_factor, upsample, upsample_affine,
)
from mrisr.data.local import LocalScan
from mrisr.data.protocol import (
    Acquisition, acquired_lr, aligned_box, box_start, crop_normalised, lr_scale, lr_tissue_level,
)
from mrisr.data.skullstrip import skullstrip_with_mask
from mrisr.data.sources import fetch_subject
from mrisr.data.splits import split_subjects, write_splits
from mrisr.io import (
    InputError, atomic_path, check_contrast, check_same_grid, crop_or_pad, file_sha256, load_volume, save_volume,
    voxel_sizes, write_tsv,
)

if TYPE_CHECKING:  # imported where used: a job imports torch only if it trains or samples
    from mrisr.report import ReportInputs, ReportOutputs
    from mrisr.training import TrainJob

log = logging.getLogger("mrisr")


def fetch(subject: str, config: Mapping[str, Any], out_t1: str, out_mask: str | None = None,
          scan: LocalScan | None = None) -> None:
    """Fetch one subject's raw T1 (and the source's brain mask) from the configured source (``data.sources``)."""
    fetch_subject(subject, config, out_t1, out_mask, scan)


def skullstrip(
    raw_t1: str, out_t1: str, out_mask: str,
    margin_mm: float, multiple: int | Sequence[int], percentile: float,
    raw_mask: str | None = None, acquisition: Acquisition | None = None,
) -> None:
    """Find the brain, crop to it (sides divisible by ``multiple``, per axis), normalise to [0, 1] (``data.protocol``).

    The mask is the source's (``raw_mask``) when it ships one, otherwise
    estimated from the T1 (``data.brain_extraction``). Either way it is written
    to ``out_mask``, beside the HR volume, on the same cropped grid. With
    ``acquisition`` (the acquisition protocol) the HR is the whole head in the
    box, scaled as its LR is (``data.protocol.lr_scale`` by ``acquisition.normalise``:
    the percentile of the LR's own brain, or of its field of view); without (the
    seed's masked protocol) it is the brain only, scaled by the brain's percentile.
    """
    t1, affine = load_volume(raw_t1)
    check_contrast(t1, raw_t1)
    mask = _brain_mask(t1, affine, raw_t1, raw_mask)
    if acquisition is None:
        out = skullstrip_with_mask(t1, mask, affine, margin_mm, multiple, percentile)
        hr, box_mask, box_affine = out.t1, out.mask, out.affine
    else:
        start, shape = aligned_box(mask > 0, affine, margin_mm, multiple)
        lr = acquisition.lr_of_field_of_view(t1)
        normalise = acquisition.normalise
        scale = lr_scale(lr, downsample_affine(affine, acquisition.factor), percentile, normalise, raw_t1)
        hr, box_affine = crop_normalised(t1, affine, start, shape, scale)
        box_mask = crop_or_pad((mask > 0).astype(np.uint8), affine, start, shape)[0]
        where = "brain found on" if normalise == "brain" else "field of view of"
        log.info("%s: whole head kept; intensity scale %.4g (the %gth percentile of the %s its x%s LR)",
                 raw_t1, scale, percentile, where, factor_label(acquisition.factor))
    save_volume(out_mask, box_mask, box_affine, dtype=np.uint8)
    save_volume(out_t1, hr, box_affine)
    log.info("%s -> %s: cropped to %s, brain %.1f %% of the box", raw_t1, out_t1, hr.shape, 100 * box_mask.mean())


def _brain_mask(t1: np.ndarray, affine: np.ndarray, raw_t1: str, raw_mask: str | None) -> np.ndarray:
    """The source's brain mask (checked against the T1's grid), or one estimated from the T1."""
    return brain_mask_of(t1, affine, raw_t1, raw_mask)[0]


def brain_mask_of(t1: np.ndarray, affine: np.ndarray, raw_t1: str, raw_mask: str | None) -> tuple[np.ndarray, str]:
    """(the brain mask, how it was found): the source's (``raw_mask``, checked against the T1's grid), or one
    estimated from the T1 (``data.brain_extraction``; ``BrainExtractionError`` naming the file if it cannot be)."""
    if raw_mask is not None:
        mask, mask_affine = load_volume(raw_mask)
        check_same_grid(mask, mask_affine, raw_mask, t1, affine, raw_t1)
        log.info("%s: brain mask from the source, %s", raw_t1, raw_mask)
        return mask, "the source's brain mask"
    try:
        found = extract_brain(t1, affine)
    except BrainExtractionError as err:
        voxel = "x".join(f"{v:.3g}" for v in voxel_sizes(affine))
        raise BrainExtractionError(f"{raw_t1}: no brain mask could be estimated at {voxel} mm voxels: {err}") from None
    log.info(
        "%s: brain mask estimated: %.0f mL, brain intensity %.4g, separated from the scalp at %.0f mm erosion",
        raw_t1, found.volume_ml, found.brain_intensity, found.erosion_mm,
    )
    return found.mask, (f"estimated from the T1w (mrisr.data.brain_extraction: separated from the scalp at "
                        f"{found.erosion_mm:g} mm erosion, {found.volume_ml:.0f} mL)")


def make_lr(hr_path: str, out_path: str, acquisition: Acquisition, raw_t1: str | None = None,
            percentile: float = 99.5) -> None:
    """The LR volume; its file carries the coarse affine (``data.protocol``).

    With ``raw_t1`` (the acquisition protocol): the raw whole-head volume
    degraded over its field of view as ``acquisition`` says (factor per axis,
    method, order, slice profile), scaled by its ``percentile`` (of its own
    brain or field of view: ``acquisition.normalise``) and cropped to the HR
    volume's box. Without (the seed's masked protocol): the HR volume itself degraded.
    """
    hr, affine = load_volume(hr_path)
    factor = acquisition.factor
    if raw_t1 is None:
        lr, lr_affine = acquisition.degradation.downsample(hr, factor), downsample_affine(affine, factor)
    else:
        t1, raw_affine = load_volume(raw_t1)
        start = box_start(raw_affine, affine)
        lr, lr_affine, _ = acquired_lr(t1, raw_affine, start, hr.shape, acquisition, percentile, raw_t1)
        if not np.allclose(lr_affine, downsample_affine(affine, factor), atol=1e-4):
            raise ValueError(f"{out_path}: the LR grid does not lie over the HR volume {hr_path}")
    save_volume(out_path, lr, lr_affine)
    log.info("%s -> %s: x%s by %s (order %d, %s protocol), %s -> %s", raw_t1 or hr_path, out_path,
             factor_label(factor), acquisition.method, acquisition.order, "acquisition" if raw_t1 else "masked",
             hr.shape, lr.shape)


def cache_stage(hr_path: str, lr_path: str, mask_path: str, factors: Sequence, stage: int, out_dir: str,
                degradation: Degradation = Degradation()) -> None:
    """Write one subject's training pair of ``stage`` (0-based) to ``out_dir`` (``training.cache``)."""
    from mrisr.diffusion.cascade import stage_pair
    from mrisr.training.cache import write_stage_cache

    hr, hr_affine = load_volume(hr_path)
    lr, lr_affine = load_volume(lr_path)
    mask, mask_affine = load_volume(mask_path)
    check_same_grid(mask, mask_affine, mask_path, hr, hr_affine, hr_path)
    pair = stage_pair(hr, lr, mask > 0, factors, stage, degradation.order, degradation.method, degradation.profile)
    info = write_stage_cache(pair, out_dir, voxel_sizes(lr_affine), lr_tissue_level(lr, lr_affine))
    log.info("%s: stage %d training pair %s, brain box %s..%s", out_dir, stage + 1, info.shape, *info.brain_box)


def predict(predictor_path: str, cache_dirs: Sequence[str], device: str = "auto") -> None:
    """Write the stage predictor's output over each subject's cached condition (``cache_dirs``) as its
    ``pred.npy`` (``training.cache.write_prediction``), as inference computes it: the diffusion model trains
    on it. The predictor is loaded once for all of them."""
    import torch

    from mrisr.device import pick_device
    from mrisr.inference import load_predictor, predictor_output
    from mrisr.training.cache import CachedVolume, write_prediction

    model, flips = load_predictor(predictor_path, pick_device(device))
    for cache_dir in cache_dirs:
        cached = CachedVolume(cache_dir)
        cond = cached.read("cond", tuple(slice(0, n) for n in cached.shape))
        with torch.no_grad():
            pred = predictor_output(model, cond, flips)
        path = write_prediction(cache_dir, pred)
        log.info("%s -> %s: g over %d mirroring(s)", predictor_path, path, len(flips))


def split(subjects: Sequence[str], seed: int, val_fraction: float, test_fraction: float, out_path: str) -> None:
    """Write the seeded subject-level split (``data.splits``)."""
    assignment = split_subjects(subjects, seed, val_fraction, test_fraction)
    write_splits(out_path, assignment)
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "val", "test")}
    log.info("split %d subjects: %s", len(assignment), counts)


def train(job: TrainJob, out_plot: str, nproc: int = 1, threads: int = 1, log_file: str | None = None) -> None:
    """Train one cascade stage on the train subjects, validating on the val subjects (``training.run_job``).

    With ``nproc`` > 1 the stage is trained by that many DDP workers started
    with torchrun (``training.ddp.launch``; ``log_file`` receives the first
    worker's log, each worker uses ``threads // nproc`` CPU threads). Training
    resumes from ``job.run.resume`` and checkpoints there. Stop signals are
    caught from the start: one while the volumes load stops training after
    its first step; one after training waits the second the loss plot takes,
    so a trained stage is never lost to a signal that came just too late.
    """
    from mrisr.report import plot_loss_curve
    from mrisr.resume import StopSignals
    from mrisr.training import run_job
    from mrisr.training.ddp import launch

    with StopSignals() as stop:
        if nproc > 1:
            launch(job, nproc, log_file, threads)
        else:
            run_job(job, stop)
        plot_loss_curve(job.run.log_tsv, out_plot, title=f"stage {job.run.stage + 1}")


# The sampling settings a training run's inference used, beside its stage folders
# (results/models/sampling.json): the workflow's super_resolve jobs read them from
# there, and ``mrisr super-resolve`` takes them as its defaults, so both give the
# same volume for the same model.
SAMPLING_SETTINGS = "sampling.json"


def write_sampling_settings(sampling: Mapping[str, Any], out_path: str) -> None:
    """The run's inference sampling settings (``SamplingOptions.to_dict``), validated, as JSON."""
    settings = SamplingOptions.from_mapping(sampling).to_dict()
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(json.dumps({"sampling": settings}, indent=2, sort_keys=True) + "\n")
    log.info("%s: %s", out_path, ", ".join(f"{k} {v}" for k, v in sorted(settings.items())))


def read_sampling_settings(path: str | Path) -> dict[str, Any]:
    """The sampling section a ``write_sampling_settings`` file holds; ``InputError`` naming ``path`` when it is not
    one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the run's sampling settings ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("sampling"), dict):
        raise InputError(f"{path}: not a sampling settings file (no 'sampling' mapping)")
    return record["sampling"]


def run_sampling_settings(checkpoints: Sequence[str]) -> Path | None:
    """The training run's ``SAMPLING_SETTINGS`` for these stage checkpoints (beside the last one's stage folder,
    ``results/models/stage{k}/checkpoint.pt`` -> ``results/models/sampling.json``), or None."""
    last = Path(checkpoints[-1]).resolve()
    for folder in (last.parent, last.parent.parent):
        if (folder / SAMPLING_SETTINGS).is_file():
            return folder / SAMPLING_SETTINGS
    return None


# What super_resolve can write beside the SR volume: the final stage's samples' sd (sampling.n_samples > 1),
# its predictor alone and its first sample (predict, then refine).
EXTRA_OUTPUTS = ("sd", "predictor", "sample")


def super_resolve(
    lr_path: str, checkpoints: Sequence[str], sampling: SamplingOptions,
    out_sr: str, out_stages: Sequence[str], device: str = "auto", extra: Mapping[str, str | None] | None = None,
) -> None:
    """Cascaded super-resolution of one LR file; writes every stage's output and the final SR.

    ``extra`` names files for the final stage's ``EXTRA_OUTPUTS``: ``sd``, the
    per-voxel standard deviation of its samples (``sampling.n_samples`` > 1);
    ``predictor``, its predictor alone (on the stage's input: the previous
    stages' estimates); ``sample``, its first sample. A name given ``None`` is
    not written.
    """
    from mrisr.inference import super_resolve as run

    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    unknown = set(extra) - set(EXTRA_OUTPUTS)
    if unknown:
        raise ValueError(f"unknown super_resolve outputs {sorted(unknown)}; known: {', '.join(EXTRA_OUTPUTS)}")
    lr, affine = load_volume(lr_path)
    outputs = run(lr, checkpoints, sampling, device=device, log=log.info)
    if len(out_stages) != len(outputs):
        raise ValueError(f"{len(out_stages)} stage outputs named for a {len(outputs)}-stage cascade")
    for path, out in zip(out_stages, outputs):
        save_volume(path, out.mean, upsample_affine(affine, grid_factor(lr.shape, out.mean.shape)))
    final = outputs[-1]
    factor = grid_factor(lr.shape, final.mean.shape)
    needs = {"sd": "sampling.n_samples > 1", "predictor": "a predict-and-refine model",
             "sample": "a diffusion sample (sampling.n_samples > 1 with the predictor's estimate)"}
    for name, path in extra.items():
        volume = getattr(final, name)
        if volume is None:
            raise ValueError(f"{path}: the model's last stage gives no {name} here (it needs {needs[name]})")
        save_volume(path, volume, upsample_affine(affine, factor))
    save_volume(out_sr, final.mean, upsample_affine(affine, factor))
    log.info("%s -> %s: x%s, %s -> %s", lr_path, out_sr, factor_label(factor), lr.shape, final.mean.shape)


def baseline(lr_path: str, factor: int | Sequence[int], order: int, out_path: str) -> None:
    """Spline interpolation of the LR volume onto the HR grid (the baseline SR is measured against)."""
    lr, affine = load_volume(lr_path)
    up = np.clip(upsample(lr, factor, order), 0.0, 1.0)
    save_volume(out_path, up, upsample_affine(affine, factor))
    log.info("%s -> %s: spline order %d, x%s", lr_path, out_path, order, factor_label(factor))


def evaluate(
    subject: str, hr_path: str, mask_path: str, methods: Mapping[str, str], out_path: str,
    sd_path: str | None = None, out_calibration: str | None = None,
) -> None:
    """PSNR and SSIM of every method's volume against HR inside the brain mask and its interior, and HFEN
    (``metrics.scores``).

    With ``sd_path`` (the SR samples' standard deviation) and
    ``out_calibration``, also the binned error-versus-uncertainty table of SR.
    """
    hr, hr_affine = load_volume(hr_path)
    mask, _ = load_volume(mask_path)
    rows, volumes = [], {}
    for method, path in methods.items():
        estimate, affine = load_volume(path)
        check_same_grid(estimate, affine, path, hr, hr_affine, hr_path)
        volumes[method] = estimate
        rows.append({"subject": subject, "method": method, **metrics.scores(hr, estimate, mask > 0),
                     "data_range": metrics.DATA_RANGE})
        log.info("%s %s: PSNR %.3f dB (interior %.3f), SSIM %.4f (interior %.4f), HFEN %.4f", subject, method,
                 *(rows[-1][k] for k in metrics.SCORES))
    if sd_path is not None and out_calibration is not None:
        sd, _ = load_volume(sd_path)
        table = metrics.error_vs_uncertainty(hr, volumes["sr"], sd, mask > 0)
        write_tsv(out_calibration, ["subject", "bin", "sd", "rms_sd", "rmse", "mae", "voxels"],
                  [[subject, k, f"{r['sd']:.6g}", f"{r['rms_sd']:.6g}", f"{r['rmse']:.6g}", f"{r['mae']:.6g}",
                    r["voxels"]] for k, r in enumerate(table)])
    metrics.write_metrics(out_path, rows)


def fit_sd_calibration(
    subjects: Sequence[str], paths: Mapping[str, Sequence[str]], method: str, sampling: Mapping[str, Any],
    out_path: str, checkpoints: Sequence[str] = (),
) -> None:
    """The sd map's calibration, fitted on validation subjects (``metrics.fit_sd_calibration``).

    ``paths`` gives each subject's files in the order of ``subjects``: ``hr``,
    ``mask``, ``sr`` and ``sd``. Each subject's SR (the configured estimate) and sd map, drawn exactly as the
    test subjects' are, are compared with its HR inside the brain mask; the
    calibration ``method`` (``calibration.method``: floor and scale, pooled over all
    their brain voxels) is written as JSON with each subject's RMS error and RMS
    sd before and after, and the sampling and checkpoints (SHA-256) it holds for
    (``calibrate_sd`` applies it to a test subject's map; ``check_sd_calibration``
    refuses it for another model or sampling).
    """
    kinds = ("hr", "mask", "sr", "sd")
    if not subjects or any(len(paths[kind]) != len(subjects) for kind in kinds):
        raise ValueError("fit_sd_calibration needs one HR, mask, SR and sd file per subject, and one subject at least")
    sums = []  # a subject's volumes are read once and dropped: only their sums are kept
    for hr_path, mask_path, sr_path, sd_path in zip(*(paths[kind] for kind in kinds)):
        hr, hr_affine = load_volume(hr_path)
        mask, _ = load_volume(mask_path)
        sr, sr_affine = load_volume(sr_path)
        sd, sd_affine = load_volume(sd_path)
        check_same_grid(sr, sr_affine, sr_path, hr, hr_affine, hr_path)
        check_same_grid(sd, sd_affine, sd_path, hr, hr_affine, hr_path)
        sums.append(metrics.calibration_sums(hr, sr, sd, mask > 0))
    fitted = metrics.fit_sd_calibration(sums, method)

    def rms(t: Mapping[str, float], key: str) -> float:
        return (t[key] / t["voxels"]) ** 0.5

    # the calibrated map's mean square over a subject's voxels: floor^2 + scale^2 mean(sd^2)
    per_subject = {subject: {"rms_error": rms(t, "sum_sq_error"), "rms_sd": rms(t, "sum_sq_sd"),
                             "rms_sd_calibrated": math.hypot(fitted.floor, fitted.scale * rms(t, "sum_sq_sd")),
                             "voxels": t["voxels"]} for subject, t in zip(subjects, sums)}
    pooled = {k: sum(t[k] for t in sums) for k in ("voxels", "sum_sq_error", "sum_sq_sd")}
    record = {
        "method": method, "floor": fitted.floor, "scale": fitted.scale, "fitted_on": "validation",
        "rms_error": rms(pooled, "sum_sq_error"), "rms_sd": rms(pooled, "sum_sq_sd"), "voxels": pooled["voxels"],
        "subjects": per_subject, "sampling": dict(sampling),
        "checkpoints": [{"path": str(p), "sha256": file_sha256(p)} for p in checkpoints],
    }
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if fitted.scale == 0:
        log.warning("the samples' sd does not rise with the error on the validation subjects: every test subject's "
                    "sd map is the constant %.5f, their RMS error", fitted.floor)
    log.info("sd calibration %s: floor %.5f, scale %.4f from %d validation subject(s), %d brain voxels "
             "(RMS error %.5f, RMS sd %.5f)", method, fitted.floor, fitted.scale, len(subjects), pooled["voxels"],
             record["rms_error"], record["rms_sd"])


def _sd_calibration_record(path: str | Path) -> tuple[dict[str, Any], metrics.SdCalibration]:
    """A ``fit_sd_calibration`` file, read once: its record and its checked calibration."""
    try:
        record = json.loads(Path(path).read_text())
        values = {k: record[k] for k in ("floor", "scale")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not an sd calibration file ({err!r})") from err
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise InputError(f"{path}: the sd calibration's {key} must be a number >= 0, not {value!r}")
    return record, metrics.SdCalibration(floor=float(values["floor"]), scale=float(values["scale"]))


def read_sd_calibration(path: str | Path) -> metrics.SdCalibration:
    """The calibration of a ``fit_sd_calibration`` file, checked."""
    return _sd_calibration_record(path)[1]


# The sampling settings an sd calibration depends on: how spread the samples are, and what they are compared with.
SD_CALIBRATION_SAMPLING = ("method", "steps", "eta", "start_t", "n_samples", "estimate", "flip_ensemble", "variance",
                           "data_consistency")


def check_sd_calibration(
    path: str | Path, sampling: SamplingOptions, checkpoints: Sequence[str]
) -> metrics.SdCalibration:
    """The calibration of a ``fit_sd_calibration`` file, if it holds for this model and sampling; else an
    ``InputError``.

    A calibration relates one model's error to its samples' spread under one
    sampler: with other checkpoints (by SHA-256) or other sampling settings
    (``SD_CALIBRATION_SAMPLING``) it means nothing.
    """
    record, calibration = _sd_calibration_record(path)
    fitted, now = record.get("sampling", {}), sampling.to_dict()
    differ = [f"{k} {fitted.get(k)!r} (now {now[k]!r})" for k in SD_CALIBRATION_SAMPLING if fitted.get(k) != now[k]]
    if differ:
        raise InputError(f"{path}: fitted with other sampling settings: {', '.join(differ)}; "
                         "a calibration holds only for the sampling it was fitted with")
    if not record.get("checkpoints"):
        raise InputError(f"{path}: records no checkpoints, so it cannot be checked against these (written by an "
                         "older mrisr?); fit it again: snakemake results/calibration/sd_calibration.json")
    fitted_hashes = [c.get("sha256") for c in record["checkpoints"]]
    if fitted_hashes != [file_sha256(p) for p in checkpoints]:
        raise InputError(f"{path}: fitted for other checkpoints than {', '.join(map(str, checkpoints))} "
                         "(their SHA-256 differ); a calibration holds only for the model it was fitted on")
    return calibration


def calibrate_sd(sd_path: str, calibration_path: str, out_path: str) -> None:
    """A test subject's calibrated sd map: its samples' sd through the validation-fitted calibration
    (``fit_sd_calibration``): sqrt(floor^2 + scale^2 sd^2)."""
    calibration = read_sd_calibration(calibration_path)
    sd, affine = load_volume(sd_path)
    save_volume(out_path, calibration.apply(sd), affine)
    log.info("%s -> %s: sqrt(%.5f^2 + (%.4f sd)^2) (%s)", sd_path, out_path, calibration.floor, calibration.scale,
             calibration_path)


def collect_metrics(paths: Sequence[str], out_path: str) -> None:
    """Concatenate per-subject metric tables into one."""
    rows = [row for p in paths for row in metrics.read_metrics(p)]
    metrics.write_metrics(out_path, rows)


def plot_slices(
    subject: str, lr_path: str, spline_path: str, sr_path: str, hr_path: str, mask_path: str,
    out_panels: str, out_sweep: str,
) -> None:
    """One test subject's slice panels and axial sweep for the report (``report.slice_figures``)."""
    from mrisr.report import slice_figures

    slice_figures(lr_path, spline_path, sr_path, hr_path, mask_path, subject, out_panels, out_sweep)
    log.info("%s: slice panels %s, sweep %s", subject, out_panels, out_sweep)


def report(inputs: ReportInputs, outputs: ReportOutputs) -> None:
    """Write the self-contained HTML report and the figures and tables it embeds (``report.build_report``)."""
    from mrisr.report import build_report

    timings = build_report(inputs, outputs)
    size = Path(outputs.html).stat().st_size
    log.info("report written to %s: %.2f MB in %.1f s", outputs.html, size / 1e6, sum(timings.values()))
