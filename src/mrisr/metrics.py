"""Image-quality metrics inside the brain mask, and inside its interior.

Volumes are normalised to [0, 1] (``io.normalise_intensity``), so the
metrics use ``DATA_RANGE`` = 1 and both volumes are clipped to [0, 1] first.

- PSNR = 10 log10(DATA_RANGE^2 / MSE), MSE over brain voxels only
  (``skimage.metrics.peak_signal_noise_ratio`` on the masked voxels).
- SSIM (Wang et al. 2004): the SSIM map of the whole volume from
  ``skimage.metrics.structural_similarity`` with the paper's settings
  (Gaussian window, sigma 1.5, population covariance, K1 0.01, K2 0.03),
  averaged over the brain voxels.
- The interior: the brain mask eroded by ``INTERIOR_EROSION`` = 2 voxels (6-connected
  structuring element, applied twice). PSNR and SSIM there (``psnr_interior``,
  ``ssim_interior``) cannot be won at the mask's edge, where the brain meets
  a dark background and an error is cheap to make and to undo.
- HFEN, the high-frequency error norm (Ravishankar & Bresler 2011, eq. 19):
  || LoG(estimate) - LoG(reference) ||_2 / || LoG(reference) ||_2, with LoG the
  Laplacian of a Gaussian of sigma 1.5 voxels (``scipy.ndimage.gaussian_laplace``,
  truncated at 4 sigma) applied to the whole volume, the norms taken over brain
  voxels. Lower is better; 0 is a perfect edge-and-texture match.
- Calibration of an sd map (``calibration_sums``, ``fit_sd_calibration``,
  ``SdCalibration``): an sd map is calibrated for the estimate it comes with
  when, over the brain voxels, RMS(sd) = RMS(estimate - reference), and in
  every part of the brain the map marks as more or less certain. Two maps
  fitted on validation subjects, both matching the RMS exactly there:
  ``scale``, σ-scaling (after Laves et al. 2020, "Well-calibrated regression
  uncertainty in medical imaging with deep learning", MIDL): s·sd with
  s = sqrt(sum err^2 / sum sd^2). Laves et al. fit s by the Gaussian
  likelihood, s^2 = mean(err^2 / sd^2), which weights each voxel by 1 / sd^2
  and so is ruled by the voxels whose few samples happened to agree; the RMS
  is the ratio the calibration is judged by. ``floor_scale``:
  sqrt(a^2 + b^2 sd^2), the least-squares line of err^2 against sd^2 (a^2 its
  intercept, b^2 its slope, both kept >= 0): a floor for the error no sample
  varies (the HR's own noise, the model's bias) beside the samples' spread.
  A least-squares line passes through the means, so mean(a^2 + b^2 sd^2) =
  mean(err^2): the RMS still matches.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from mrisr.io import write_tsv

DATA_RANGE = 1.0
INTERIOR_EROSION = 2  # voxels
HFEN_SIGMA = 1.5  # voxels
SCORES = ("psnr", "ssim", "psnr_interior", "ssim_interior", "hfen")
METRIC_COLUMNS = ("subject", "method", *SCORES, "data_range")


def _prepare(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not reference.shape == estimate.shape == mask.shape:
        raise ValueError(
            f"shapes differ: reference {reference.shape}, estimate {estimate.shape}, mask {mask.shape}"
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("brain mask is empty")
    ref = np.clip(reference.astype(np.float64), 0.0, DATA_RANGE)
    est = np.clip(estimate.astype(np.float64), 0.0, DATA_RANGE)
    return ref, est, mask


def psnr_in_mask(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) over the voxels where ``mask`` is true, data range ``DATA_RANGE``."""
    from skimage.metrics import peak_signal_noise_ratio  # here: skimage.metrics loads scipy.stats (~1 s)

    ref, est, mask = _prepare(reference, estimate, mask)
    if np.array_equal(ref[mask], est[mask]):
        return float("inf")
    return float(peak_signal_noise_ratio(ref[mask], est[mask], data_range=DATA_RANGE))


def ssim_in_mask(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """Mean of the SSIM map over the voxels where ``mask`` is true, data range ``DATA_RANGE``."""
    from skimage.metrics import structural_similarity  # here: every job imports this module, few score

    ref, est, mask = _prepare(reference, estimate, mask)
    _, ssim_map = structural_similarity(
        ref,
        est,
        data_range=DATA_RANGE,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return float(ssim_map[mask].mean())


def interior(mask: np.ndarray, voxels: int = INTERIOR_EROSION) -> np.ndarray:
    """The mask eroded by ``voxels`` voxels (6-connected), as bool; voxels outside the volume count as outside."""
    return ndimage.binary_erosion(mask.astype(bool), iterations=voxels, border_value=0)


def hfen_in_mask(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray, sigma: float = HFEN_SIGMA) -> float:
    """HFEN over the voxels where ``mask`` is true: the relative L2 error of the LoG-filtered volumes."""
    ref, est, mask = _prepare(reference, estimate, mask)
    log_ref = ndimage.gaussian_laplace(ref, sigma)
    log_est = ndimage.gaussian_laplace(est, sigma)
    return float(np.linalg.norm((log_est - log_ref)[mask]) / np.linalg.norm(log_ref[mask]))


def scores(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Every score of ``SCORES``: PSNR and SSIM in the mask and in its interior, and HFEN in the mask."""
    inner = interior(mask)
    if not inner.any():
        raise ValueError(f"the brain mask has no interior: nothing is left after eroding it by {INTERIOR_EROSION} voxels")
    return {
        "psnr": psnr_in_mask(reference, estimate, mask),
        "ssim": ssim_in_mask(reference, estimate, mask),
        "psnr_interior": psnr_in_mask(reference, estimate, inner),
        "ssim_interior": ssim_in_mask(reference, estimate, inner),
        "hfen": hfen_in_mask(reference, estimate, mask),
    }


def error_vs_uncertainty(
    reference: np.ndarray, estimate: np.ndarray, sd: np.ndarray, mask: np.ndarray, n_bins: int = 10
) -> list[dict[str, float]]:
    """Calibration of a per-voxel uncertainty map: mean |error| per bin of predicted sd.

    Brain voxels are sorted by the predicted standard deviation and split into
    ``n_bins`` bins of equal count; each row gives the bin's mean and RMS predicted sd,
    its RMS error and mean absolute error against the reference, and the voxel
    count. A useful map has errors that rise with the predicted sd (for a
    calibrated Gaussian, rmse ~ sd once the estimate is the mean of many samples).
    """
    ref, est, mask = _prepare(reference, estimate, mask)
    if sd.shape != mask.shape:
        raise ValueError(f"shapes differ: sd {sd.shape}, mask {mask.shape}")
    s, err = sd[mask].astype(np.float64), (est - ref)[mask]
    order = np.argsort(s, kind="stable")
    rows = []
    for chunk in np.array_split(order, n_bins):
        if len(chunk) == 0:
            continue
        rows.append({
            "sd": float(s[chunk].mean()),
            "rms_sd": float(np.sqrt(np.mean(s[chunk] ** 2))),
            "rmse": float(np.sqrt(np.mean(err[chunk] ** 2))),
            "mae": float(np.mean(np.abs(err[chunk]))),
            "voxels": int(len(chunk)),
        })
    return rows


def calibration_sums(
    reference: np.ndarray, estimate: np.ndarray, sd: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """Sums over the brain voxels that an sd calibration pools across subjects (``fit_sd_calibration``):
    the count n and the sums of err^2, sd^2, sd^4 and err^2 sd^2."""
    ref, est, mask = _prepare(reference, estimate, mask)
    if sd.shape != mask.shape:
        raise ValueError(f"shapes differ: sd {sd.shape}, mask {mask.shape}")
    err2, sd2 = ((est - ref)[mask]) ** 2, sd[mask].astype(np.float64) ** 2
    return {"voxels": int(mask.sum()), "sum_sq_error": float(err2.sum()), "sum_sq_sd": float(sd2.sum()),
            "sum_sd4": float((sd2 ** 2).sum()), "sum_sq_error_sq_sd": float((err2 * sd2).sum())}


@dataclass(frozen=True)
class SdCalibration:
    """A calibrated sd map from the samples' sd: sqrt(floor^2 + scale^2 sd^2) (module docstring)."""

    floor: float
    scale: float

    def apply(self, sd: np.ndarray) -> np.ndarray:
        return np.sqrt(self.floor ** 2 + (self.scale * sd.astype(np.float64)) ** 2).astype(np.float32)


CALIBRATIONS = ("floor_scale", "scale")


def fit_sd_calibration(sums: Sequence[Mapping[str, float]], method: str = "floor_scale") -> SdCalibration:
    """The calibration of ``method`` (``CALIBRATIONS``) from pooled ``calibration_sums`` (module docstring).

    ``scale``: floor 0, scale sqrt(sum err^2 / sum sd^2). ``floor_scale``: the
    least-squares a^2 + b^2 sd^2 to err^2 (normal equations of the line through
    (sd^2, err^2)); a negative slope becomes 0 (the map then carries no
    information: a constant, the RMS error), a negative intercept falls back to
    ``scale``. Either way the calibrated map's mean square is the error's over
    the voxels the sums came from.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown sd calibration {method!r}: one of {', '.join(CALIBRATIONS)}")
    n, e, s2, s4, es = (sum(t[k] for t in sums) for k in
                        ("voxels", "sum_sq_error", "sum_sq_sd", "sum_sd4", "sum_sq_error_sq_sd"))
    if not s2 > 0:
        raise ValueError("the sd maps are zero in every brain voxel: nothing to calibrate (are the samples identical?)")
    if method == "floor_scale":
        det = n * s4 - s2 * s2
        slope = max((n * es - s2 * e) / det, 0.0) if det > 0 else 0.0
        intercept = (e - slope * s2) / n
        if intercept >= 0:
            return SdCalibration(floor=float(np.sqrt(intercept)), scale=float(np.sqrt(slope)))
    return SdCalibration(floor=0.0, scale=float(np.sqrt(e / s2)))


def write_metrics(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """A metrics table (``METRIC_COLUMNS``), floats to 6 decimals, written atomically."""
    def cell(value: object) -> object:
        return f"{value:.6f}" if isinstance(value, float) else value

    write_tsv(path, METRIC_COLUMNS, [[cell(row[k]) for k in METRIC_COLUMNS] for row in rows])


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """A metrics table as dicts, its scores and data_range as floats (NaN for a score an older table lacks)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for row in rows:
        for key in (*SCORES, "data_range"):
            row[key] = float(row.get(key, "nan"))
    return rows
