"""Apply mode's stages, files in and files out: a trained cascade over a dataset, as BIDS Derivatives.

The workflow's apply rules (``workflow/rules/apply.smk``) call these; each
output is written atomically, its JSON sidecar beside it
(``data.bids``). ``apply_scan`` is ``mrisr super-resolve`` on one scan
(``apply.apply_cascade``: the same normalisation, voxel-size check and
output grid) with the derivative's sidecar; ``apply_mask`` is the brain
mask of the training path's ``skullstrip`` (``pipeline.brain_mask_of``) on
the scan's own grid; ``export_test_subject`` writes a training run's test
subject as the same derivatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import mrisr
from mrisr.config import SamplingOptions
from mrisr.data.bids import dataset_description, schema_rules, tree_problems, write_json
from mrisr.data.degrade import factor_json, factor_label
from mrisr.diffusion.cascade import total_factor
from mrisr.io import check_contrast, file_sha256, load_volume, save_volume, voxel_sizes
from mrisr.metrics import SdCalibration
from mrisr.pipeline import brain_mask_of, read_sd_calibration

log = logging.getLogger("mrisr")


def sidecar_path(image: str) -> str:
    """The JSON sidecar of a NIfTI: ``x_desc-sr_T1w.nii.gz`` -> ``x_desc-sr_T1w.json``."""
    for extension in (".nii.gz", ".nii"):
        if image.endswith(extension):
            return image[: -len(extension)] + ".json"
    raise ValueError(f"{image}: not a .nii or .nii.gz name")


@dataclass(frozen=True)
class ApplyFiles:
    """One scan's apply job: the scan in (and its brain mask, which the masked protocol needs, and the
    training run's sd calibration, ``apply.sd_calibration``); the derivatives out (``sr``, and ``sd`` with
    several samples), each with its sidecar beside it."""

    scan: str
    sr: str
    mask: str | None = None
    sd: str | None = None
    sd_calibration: str | None = None


def checkpoint_records(paths: Sequence[str], factors: Sequence) -> list[dict[str, Any]]:
    """The checkpoints as a sidecar lists them: path, SHA-256, stage (1-based), factor (``factor_json``)."""
    return [{"Path": str(p), "SHA256": file_sha256(p), "Stage": k + 1, "Factor": factor_json(f)}
            for k, (p, f) in enumerate(zip(paths, factors))]


def calibration_fields(path: str | None) -> tuple[SdCalibration | None, dict[str, Any]]:
    """The calibration an sd map goes through (None: the samples' sd as drawn) and the sidecar fields that say how."""
    if path is None:
        return None, {"SdCalibration": "none: the standard deviation of the samples as drawn"}
    fitted = read_sd_calibration(path)
    return fitted, {
        "SdCalibration": (f"sqrt(floor^2 + (scale * sd)^2) of the samples' standard deviation sd, floor "
                          f"{fitted.floor:.4g} and scale {fitted.scale:.4g} fitted on the training run's validation "
                          "subjects so that it predicts the RMS error of their SR"),
        "SdCalibrationFloor": fitted.floor, "SdCalibrationScale": fitted.scale,
        "SdCalibrationFile": {"Path": str(path), "SHA256": file_sha256(path)},
    }


def _sr_fields(records: list[dict], options: SamplingOptions, factor: int | Sequence[int],
               voxel: Sequence[float]) -> dict[str, Any]:
    """The sidecar fields every SR derivative has: how it was made and on what grid (``ScaleFactor``: an
    integer, or one per voxel axis for a thick-slice model)."""
    return {
        "Checkpoints": records, "Sampling": options.to_dict(), "ScaleFactor": factor_json(factor),
        "VoxelSize": [round(float(v), 6) for v in voxel],
        "Software": {"Name": "mrisr", "Version": mrisr.__version__},
    }


def apply_scan(files: ApplyFiles, checkpoints: Sequence[str], sampling: SamplingOptions, sources: Sequence[str],
               percentile: float | None = None, device: str = "auto") -> None:
    """Super-resolve one scan as acquired (``apply.apply_cascade``) and write it as BIDS derivatives.

    ``sources`` are the derivative's ``Sources`` (the input's BIDS URI or
    location, and the mask's when one is used). Bad input raises before
    anything is written (``io.InputError``: the file and the problem).
    """
    from mrisr.apply import Cascade, Scan, apply_cascade
    from mrisr.device import pick_device

    cascade = Cascade.load(checkpoints, sampling, pick_device(device))
    if files.sd is not None and (sampling.n_samples < 2 or cascade.stages[-1].regression):
        raise ValueError(f"{files.sd}: an sd map needs sampling.n_samples of 2 or more, and a diffusion model "
                         "(a regression baseline draws no samples)")
    scan = Scan.load(files.scan, files.mask, keep_head=cascade.protocol == "acquisition")
    out = apply_cascade(scan, cascade, sampling, percentile, log=log.info, warn=log.warning)
    fields = _sr_fields(checkpoint_records(checkpoints, [s.factor for s in cascade.stages]), sampling, out.factor,
                        out.voxel_size_mm)
    fields |= {
        "Sources": list(sources), "SkullStripped": cascade.protocol != "acquisition",
        "InputVoxelSize": [round(float(v), 6) for v in voxel_sizes(scan.affine)],
        "TrainingInputVoxelSize": cascade.lr_voxel_size_mm, "VoxelSizeWarning": out.warning,
        "IntensityWarning": out.intensity_warning,
        "AxisOrder": list(out.axis_order),  # the input's voxel axes as the model saw them (thick-slice models)
        "NormalisationProtocol": cascade.protocol, "IntensityNormalisation": cascade.normalisation[0],
        "IntensityPercentile": cascade.normalisation[1] if percentile is None else percentile,
        "IntensityScale": out.scale,
    }
    units = (f"in the input's intensity units, on a grid ×{factor_label(out.factor)} finer whose affine lies "
             "exactly over the input")
    if files.sd is not None:
        fitted, calibration = calibration_fields(files.sd_calibration)
        save_volume(files.sd, out.sd if fitted is None else fitted.apply(out.sd), out.affine)
        write_json(sidecar_path(files.sd), fields | calibration | {"Description": (
            f"Per-voxel standard deviation of the {sampling.n_samples} samples of the super-resolved T1w, {units}")})
    save_volume(files.sr, out.sr, out.affine)
    write_json(sidecar_path(files.sr), fields | {"Description": (
        f"Super-resolved T1w (mrisr, {sampling.estimate} estimate of a diffusion cascade), {units}")})
    log.info("%s -> %s: x%s, %s -> %s, %s", files.scan, files.sr, factor_label(out.factor), scan.data.shape, out.sr.shape,
             sampling.describe())


def apply_mask(raw_t1: str, out_mask: str, sources: Sequence[str], raw_mask: str | None = None) -> None:
    """The brain mask of one scan on its own grid (the source's, or estimated: ``pipeline.brain_mask_of``), with
    its sidecar; a scan whose brain cannot be separated from the scalp fails with a message naming it."""
    t1, affine = load_volume(raw_t1)
    check_contrast(t1, raw_t1)
    mask, how = brain_mask_of(t1, affine, raw_t1, raw_mask)
    save_volume(out_mask, (mask > 0).astype(np.uint8), affine, dtype=np.uint8)
    write_json(sidecar_path(out_mask), {
        "Type": "Brain", "Sources": list(sources),
        "Description": f"Brain mask on the input scan's grid: {how}",
        "Software": {"Name": "mrisr", "Version": mrisr.__version__},
    })
    log.info("%s -> %s: brain mask, %s", raw_t1, out_mask, how)


def describe_derivatives(out_path: str, sources: Sequence[Mapping[str, str]], links: Mapping[str, str],
                         repo_dir: str | None) -> None:
    """The derivatives' ``dataset_description.json``: mrisr's version and git commit, the source dataset."""
    from mrisr.report.provenance import git_state

    values = dataset_description(mrisr.__version__, git_state(repo_dir), sources, links)
    write_json(out_path, values)
    log.info("%s: %s, generated by mrisr %s", out_path, values["DatasetType"], mrisr.__version__)


@dataclass(frozen=True)
class HeldOutFiles:
    """A training run's test subject: its SR, sd map and brain mask (results/sr, results/hr), and its LR."""

    lr: str
    sr: str
    mask: str
    sd: str | None = None
    sd_calibration: str | None = None  # the calibration the sd map went through, when it did


def export_test_subject(inputs: HeldOutFiles, out: ApplyFiles, out_mask: str, checkpoints: Sequence[str],
                        factors: Sequence, sampling: SamplingOptions, sources: Sequence[str]) -> None:
    """Write a training run's test subject (``inputs``) as the derivatives apply mode writes (``out``,
    ``out_mask``), on the workflow's cropped grid and normalised intensity scale, which the sidecars say."""
    sr, affine = load_volume(inputs.sr)
    lr, lr_affine = load_volume(inputs.lr)
    mask, mask_affine = load_volume(inputs.mask)
    factor = total_factor(factors)
    fields = _sr_fields(checkpoint_records(checkpoints, factors), sampling, factor, voxel_sizes(affine))
    fields |= {"Sources": list(sources), "SkullStripped": False,
               "InputVoxelSize": [round(float(v), 6) for v in voxel_sizes(lr_affine)]}
    made = (f"from the simulated LR (×{factor_label(factor)}) of a training run's test subject, on the workflow's grid cropped "
            "around the brain and its normalised intensity scale (the training run's skullstrip.normalise)")
    if inputs.sd is not None and out.sd is not None:
        sd, sd_affine = load_volume(inputs.sd)  # already calibrated by the training run (calibrate_sd)
        save_volume(out.sd, sd, sd_affine)
        write_json(sidecar_path(out.sd), fields | calibration_fields(inputs.sd_calibration)[1] | {
            "Description": f"Per-voxel sd of the samples, {made}"})
    save_volume(out_mask, (mask > 0).astype(np.uint8), mask_affine, dtype=np.uint8)
    write_json(sidecar_path(out_mask), {"Type": "Brain", "Sources": list(sources),
                                        "Description": f"The subject's brain mask on the SR grid, {made}"})
    save_volume(out.sr, sr, affine)
    write_json(sidecar_path(out.sr), fields | {"Description": f"Super-resolved T1w (mrisr), {made}"})
    log.info("%s -> %s (%s LR)", inputs.sr, out.sr, lr.shape)


def plot_scan(scan_path: str, sr_path: str, sd_path: str | None, title: str, out_panels: str, out_thumb: str) -> None:
    """One scan's slice panels and thumbnail for the apply QC page (``report.apply.qc_figures``)."""
    from mrisr.report.apply import qc_figures

    qc_figures(scan_path, sr_path, sd_path, title, out_panels, out_thumb)
    log.info("%s: QC panels %s, thumbnail %s", title, out_panels, out_thumb)


def apply_report(inputs, out_html: str, derivatives: str | None = None) -> None:
    """The apply QC page (``report.apply.build_apply_report``; ``inputs`` is an ``ApplyReportInputs``), once the
    ``derivatives`` tree, when given, has passed the BIDS schema's rules (``data.bids.tree_problems``):
    ``ValueError`` listing what breaks them, and no page."""
    from mrisr.report.apply import build_apply_report

    if derivatives is not None:
        problems = tree_problems(derivatives)
        if problems:
            raise ValueError(f"{derivatives}: {len(problems)} problem(s) with the BIDS schema's rules: "
                             + "; ".join(problems[:10]))
        files = sum(1 for p in Path(derivatives).rglob("*") if p.is_file() and not p.name.startswith("."))
        log.info("%s: %d files, all named and placed as the BIDS %s schema's rules ask (bidsschematools)",
                 derivatives, files, schema_rules().version)
    build_apply_report(inputs, out_html)
    log.info("apply QC page written to %s: %.2f MB", out_html, Path(out_html).stat().st_size / 1e6)
