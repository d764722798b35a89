"""Making low-resolution volumes from high-resolution ones, and back.

Three degradations (``METHODS``, the config's ``degrade.method``), each
sampling the volume at the coarse grid's voxel centres: low-resolution voxel j
covers high-resolution voxels [f j, f j + f) and its centre sits at
high-resolution index f j + (f - 1) / 2. The affines below encode exactly that
relation for all three, so a low-resolution volume opened in a viewer lies
over its source. Sides must be multiples of the factor (``skullstrip`` crops
to make them so).

- ``spline``: spline interpolation at the coarse centres (``scipy.ndimage.zoom``
  with ``grid_mode=True``), no anti-aliasing: the seed's and ArSSR's protocol.
  Frequencies above the coarse grid's Nyquist survive, folded.
- ``gaussian``: a Gaussian point-spread function of FWHM = f voxels, then the
  spline sampling above: a model of a scanner's voxel averaging.
- ``kspace``: the central 1/f of k-space along each axis (truncation, as MR
  acquires a lower resolution by measuring fewer k-space lines), the volume
  the band-limited interpolant at the coarse centres: the coarse volume's
  spectrum is the fine one's central block (times a half-voxel phase shift
  and 1/f per axis, so that intensities keep their scale). Frequencies above
  the coarse Nyquist are removed entirely; an even-length block's Nyquist bin
  averages the fine spectrum's two bins there, so a real volume stays real.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor}")
    return int(factor)


METHODS = ("spline", "gaussian", "kspace")


def gaussian_sigma(factor: int) -> float:
    """The sd (in fine voxels) of the ``gaussian`` method's point-spread function: FWHM = factor voxels."""
    return factor / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def downsample(volume: np.ndarray, factor: int, order: int = 3, method: str = "spline") -> np.ndarray:
    """Degrade a 3D volume by an integer factor along every axis with ``method`` (see the module's doc).

    ``order`` is the spline order (0-5) of the ``spline`` and ``gaussian``
    methods. Returns float32 of shape ``volume.shape // factor``.
    """
    factor = _check_factor(factor)
    if method not in METHODS:
        raise ValueError(f"unknown degradation {method!r}; known: {', '.join(METHODS)}")
    if any(side % factor for side in volume.shape):
        raise ValueError(f"shape {volume.shape} is not divisible by the scale factor {factor}")
    if factor == 1:
        return volume.astype(np.float32, copy=True)
    data = volume.astype(np.float64)
    if method == "kspace":
        for axis in range(data.ndim):
            data = kspace_truncate(data, factor, axis)
        return data.astype(np.float32)
    if method == "gaussian":
        data = ndimage.gaussian_filter(data, sigma=gaussian_sigma(factor), mode="nearest")
    out = ndimage.zoom(data, 1.0 / factor, order=order, mode="nearest", grid_mode=True)
    return out.astype(np.float32)


def kspace_truncate(data: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Keep the central 1/factor of ``data``'s spectrum along ``axis``; sample at the coarse voxel centres.

    With N fine and M = N / factor coarse samples, coarse sample j is the
    band-limited interpolant at fine index factor j + (factor - 1) / 2:
    Y[k] = X[k] exp(2 pi i k d / N) / factor for |k| < M / 2, d = (factor - 1) / 2.
    """
    n = data.shape[axis]
    m = n // factor
    spectrum = np.moveaxis(np.fft.fft(data, axis=axis), axis, -1)
    k = np.fft.fftfreq(n, d=1.0 / n)  # integer frequencies 0, 1, ..., -1
    spectrum = spectrum * np.exp(2j * np.pi * k * ((factor - 1) / 2.0) / n)
    block = np.zeros((*spectrum.shape[:-1], m), dtype=complex)
    low = (m + 1) // 2  # frequencies 0 .. low - 1 and -(m // 2 - 1) .. -1 map one to one
    block[..., :low] = spectrum[..., :low]
    if m // 2 > 0:
        block[..., m - m // 2 + 1:] = spectrum[..., n - m // 2 + 1:]
    if m % 2 == 0:  # the coarse Nyquist bin: the mean of the fine bins at +m/2 and -m/2
        block[..., m // 2] = 0.5 * (spectrum[..., m // 2] + spectrum[..., n - m // 2])
    out = np.fft.ifft(block, axis=-1).real / factor
    return np.moveaxis(out, -1, axis)


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
