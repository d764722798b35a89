"""Making low-resolution volumes from high-resolution ones, and back.

Downsampling by an integer ``factor`` uses ``scipy.ndimage.zoom`` with
``grid_mode=True``: voxels are treated as boxes, so low-resolution voxel j
covers high-resolution voxels [f j, f j + f) and its centre sits at
high-resolution index f j + (f - 1) / 2. The affines below encode exactly that
relation, so a low-resolution volume opened in a viewer lies over its source.
Sides must be multiples of the factor (``skullstrip`` crops to make them so).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor}")
    return int(factor)


def downsample(
    volume: np.ndarray, factor: int, order: int = 3, antialias: bool = False
) -> np.ndarray:
    """Spline-downsample a 3D volume by an integer factor along every axis.

    ``order`` is the spline order (0-5). With ``antialias`` a Gaussian of FWHM
    ``factor`` voxels is applied first, a model of a scanner's voxel averaging;
    without it the volume is spline-sampled (the seed's degradation).
    Returns float32 of shape ``volume.shape // factor``.
    """
    factor = _check_factor(factor)
    if any(side % factor for side in volume.shape):
        raise ValueError(f"shape {volume.shape} is not divisible by the scale factor {factor}")
    if factor == 1:
        return volume.astype(np.float32, copy=True)
    data = volume.astype(np.float64)
    if antialias:
        sigma = factor / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    out = ndimage.zoom(data, 1.0 / factor, order=order, mode="nearest", grid_mode=True)
    return out.astype(np.float32)


def upsample(volume: np.ndarray, factor: int, order: int = 3) -> np.ndarray:
    """Spline-interpolate a 3D volume onto the grid ``factor`` times finer (the spline baseline).

    Returns float32 of shape ``volume.shape * factor``, aligned with
    ``upsample_affine``.
    """
    factor = _check_factor(factor)
    if factor == 1:
        return volume.astype(np.float32, copy=True)
    out = ndimage.zoom(volume.astype(np.float64), factor, order=order, mode="nearest", grid_mode=True)
    return out.astype(np.float32)


def downsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A brain mask on the coarse grid: coarse voxels at least half inside the brain."""
    factor = _check_factor(factor)
    if factor == 1:
        return mask.astype(bool)
    frac = ndimage.zoom(mask.astype(np.float32), 1.0 / factor, order=1, mode="nearest", grid_mode=True)
    return frac >= 0.5


def downsample_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the grid ``factor`` times coarser: voxel j centred at fine index f j + (f - 1)/2."""
    factor = _check_factor(factor)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return np.asarray(affine, dtype=np.float64) @ scale


def upsample_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the grid ``factor`` times finer; the inverse of ``downsample_affine``."""
    factor = _check_factor(factor)
    scale = np.diag([1.0 / factor, 1.0 / factor, 1.0 / factor, 1.0])
    scale[:3, 3] = -(factor - 1) / (2.0 * factor)
    return np.asarray(affine, dtype=np.float64) @ scale
