"""Making low-resolution volumes from high-resolution ones, and back.

A factor is one integer for all three axes (isotropic, e.g. 2) or one per
axis (``(1, 1, 4)``: slices four times thicker along the third voxel axis);
``as_factor3`` turns either into the per-axis form every function here uses.
Four degradations (``METHODS``, the config's ``degrade.method``), each
sampling the volume at the coarse grid's voxel centres: along an axis of
factor f, low-resolution voxel j covers high-resolution voxels [f j, f j + f)
and its centre sits at high-resolution index f j + (f - 1) / 2. The affines
below encode exactly that relation for all of them, so a low-resolution
volume opened in a viewer lies over its source. Sides must be multiples of
the factor along their axis (``skullstrip`` crops to make them so); an axis
of factor 1 is left as it is.

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
- ``slice``: a thick-slice acquisition (``slice_weights``): each coarse voxel
  integrates the fine volume, taken as constant over each fine voxel, over a
  slice profile centred on it (``SliceProfile``: a Gaussian of FWHM = the
  slice thickness, or a rectangle of that width), the thickness being the
  slice spacing (f fine voxels) less an optional gap between slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage, special


Factor = tuple[int, int, int]


def as_factor3(factor: int | Sequence[int]) -> Factor:
    """A factor per voxel axis: an integer for all three axes, or three integers, each >= 1."""
    values = [factor] * 3 if np.ndim(factor) == 0 else list(factor)
    if len(values) != 3 or any(isinstance(f, bool) or int(f) != f or f < 1 for f in values):
        raise ValueError(f"a scale factor is a positive integer or three of them (one per axis), got {factor!r}")
    return tuple(int(f) for f in values)  # type: ignore[return-value]


def is_isotropic(factor: int | Sequence[int]) -> bool:
    """Whether a factor is the same along all three axes."""
    return len(set(as_factor3(factor))) == 1


def factor_label(factor: int | Sequence[int]) -> str:
    """A factor as file names and logs write it: ``2`` when isotropic, ``1x1x4`` per axis otherwise."""
    f = as_factor3(factor)
    return str(f[0]) if is_isotropic(f) else "x".join(map(str, f))


def factor_json(factor: int | Sequence[int]) -> int | list[int]:
    """A factor as sidecars and JSON files record it: an integer when isotropic, else one per axis."""
    f = as_factor3(factor)
    return f[0] if is_isotropic(f) else list(f)


def parse_factor_label(label: str) -> Factor:
    """The factor a ``factor_label`` names (``2`` or ``1x1x4``)."""
    try:
        return as_factor3([int(p) for p in label.split("x")] if "x" in label else int(label))
    except ValueError:
        raise ValueError(f"{label!r} names no scale factor (an integer, or three joined by 'x': 1x1x4)") from None


def grid_factor(coarse_shape: Sequence[int], fine_shape: Sequence[int]) -> Factor:
    """The factor per axis between a coarse grid and the finer grid over it (sides in whole multiples)."""
    factor = tuple(int(round(n / m)) for m, n in zip(coarse_shape, fine_shape))
    if any(m * f != n for m, n, f in zip(coarse_shape, fine_shape, factor)):
        raise ValueError(f"grid {tuple(fine_shape)} is not a whole multiple of {tuple(coarse_shape)} along every axis")
    return as_factor3(factor)


def _zoom_factors(factor: Factor, inverse: bool = False) -> tuple[float, ...] | float:
    """``ndimage.zoom``'s zoom: one number when isotropic (today's call, to the last digit), else per axis."""
    zooms = tuple(1.0 / f if inverse else float(f) for f in factor)
    return zooms[0] if is_isotropic(factor) else zooms


METHODS = ("spline", "gaussian", "kspace", "slice")


def gaussian_sigma(factor: int | Sequence[int]) -> float | tuple[float, ...]:
    """The sd (in fine voxels) of the ``gaussian`` method's point-spread function: FWHM = factor voxels
    (per axis where the factor is given per axis; 0, no blur, along an axis of factor 1)."""
    if np.ndim(factor) == 0:
        return factor / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return tuple(float(gaussian_sigma(f)) if f > 1 else 0.0 for f in as_factor3(factor))


SLICE_PROFILES = ("gaussian", "rect")


@dataclass(frozen=True)
class SliceProfile:
    """How a thick slice integrates the volume across it (the ``slice`` method).

    ``shape``: ``gaussian`` (FWHM = the thickness) or ``rect`` (a box of that
    width). ``gap``: the fraction of the slice spacing not covered by the slice
    (0 for contiguous slices), so the thickness is f (1 - gap) fine voxels.
    """

    shape: str = "gaussian"
    gap: float = 0.0

    def __post_init__(self):
        if self.shape not in SLICE_PROFILES:
            raise ValueError(f"unknown slice profile {self.shape!r}; known: {', '.join(SLICE_PROFILES)}")
        if not 0.0 <= self.gap < 1.0:
            raise ValueError(f"the slice gap is a fraction of the slice spacing in [0, 1), got {self.gap}")


@dataclass(frozen=True)
class Degradation:
    """How an LR is made from an HR at any factor: ``method``, the spline ``order`` of the spline and
    gaussian methods (and of the baseline), and the slice method's ``profile``."""

    order: int = 3
    method: str = "spline"
    profile: SliceProfile = SliceProfile()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown degradation {self.method!r}; known: {', '.join(METHODS)}")

    @classmethod
    def from_config(cls, degrade: Mapping) -> "Degradation":
        """The config's (or a checkpoint's) ``degrade`` section (keys it lacks: their defaults)."""
        profile = SliceProfile(str(degrade.get("slice_profile", "gaussian")), float(degrade.get("slice_gap", 0.0)))
        return cls(int(degrade.get("order", 3)), str(degrade.get("method", "spline")), profile)

    def downsample(self, volume: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
        """``downsample`` with these settings."""
        return downsample(volume, factor, self.order, self.method, self.profile)


def slice_weights(n: int, factor: int, profile: SliceProfile) -> np.ndarray:
    """The (n / factor, n) matrix taking a line of n fine voxels to its n / factor thick slices.

    Fine voxel i is a box over [i - 1/2, i + 1/2]; slice j is centred at
    c = f j + (f - 1) / 2 with thickness w = f (1 - gap). Its weight on voxel i
    is the profile's integral over that box: for ``rect`` the overlap of
    [c - w/2, c + w/2] with the box, over w; for ``gaussian`` (sd
    w / (2 sqrt(2 ln 2))) Phi((i + 1/2 - c) / sd) - Phi((i - 1/2 - c) / sd).
    Each row is divided by its sum, so a constant stays constant and a slice
    whose profile runs past the volume's edge weighs only what lies inside.
    """
    if n % factor:
        raise ValueError(f"{n} voxels are not divisible by the factor {factor}")
    width = factor * (1.0 - profile.gap)
    centres = factor * np.arange(n // factor)[:, None] + (factor - 1) / 2.0
    lo, hi = np.arange(n)[None, :] - 0.5 - centres, np.arange(n)[None, :] + 0.5 - centres
    if profile.shape == "rect":
        weights = np.clip(np.minimum(hi, width / 2) - np.maximum(lo, -width / 2), 0.0, None)
    else:
        root2_sd = np.sqrt(2.0) * width / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # Phi(x / sd) = (1 + erf(x / root2_sd)) / 2
        weights = 0.5 * (special.erf(hi / root2_sd) - special.erf(lo / root2_sd))
    return weights / weights.sum(axis=1, keepdims=True)


def slice_integrate(data: np.ndarray, factor: int, axis: int, profile: SliceProfile) -> np.ndarray:
    """``data`` along ``axis`` taken to its thick slices (``slice_weights``)."""
    weights = slice_weights(data.shape[axis], factor, profile)
    return np.moveaxis(np.tensordot(weights, np.moveaxis(data, axis, 0), axes=(1, 0)), 0, axis)


def downsample(volume: np.ndarray, factor: int | Sequence[int], order: int = 3, method: str = "spline",
               profile: SliceProfile | None = None) -> np.ndarray:
    """Degrade a 3D volume by an integer factor per axis with ``method`` (see the module's doc).

    ``order`` is the spline order (0-5) of the ``spline`` and ``gaussian``
    methods; ``profile`` the ``slice`` method's (a Gaussian, no gap, by
    default). Returns float32 of shape ``volume.shape // factor``.
    """
    factor = as_factor3(factor)
    if method not in METHODS:
        raise ValueError(f"unknown degradation {method!r}; known: {', '.join(METHODS)}")
    if any(side % f for side, f in zip(volume.shape, factor)):
        raise ValueError(f"shape {volume.shape} is not divisible by the scale factor {factor_label(factor)}")
    if factor == (1, 1, 1):
        return volume.astype(np.float32, copy=True)
    data = volume.astype(np.float64)
    if method in ("kspace", "slice"):
        for axis, f in enumerate(factor):
            if f > 1:
                data = kspace_truncate(data, f, axis) if method == "kspace" else \
                    slice_integrate(data, f, axis, profile or SliceProfile())
        return data.astype(np.float32)
    if method == "gaussian":
        sigma = gaussian_sigma(factor[0]) if is_isotropic(factor) else gaussian_sigma(factor)
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    out = ndimage.zoom(data, _zoom_factors(factor, inverse=True), order=order, mode="nearest", grid_mode=True)
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


def upsample(volume: np.ndarray, factor: int | Sequence[int], order: int = 3) -> np.ndarray:
    """Spline-interpolate a 3D volume onto the grid ``factor`` times finer (the spline baseline).

    Returns float32 of shape ``volume.shape * factor``, aligned with
    ``upsample_affine``.
    """
    factor = as_factor3(factor)
    if factor == (1, 1, 1):
        return volume.astype(np.float32, copy=True)
    out = ndimage.zoom(volume.astype(np.float64), _zoom_factors(factor), order=order, mode="nearest",
                       grid_mode=True)
    return out.astype(np.float32)


def downsample_mask(mask: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """A brain mask on the coarse grid: coarse voxels at least half inside the brain."""
    factor = as_factor3(factor)
    if factor == (1, 1, 1):
        return mask.astype(bool)
    frac = ndimage.zoom(mask.astype(np.float32), _zoom_factors(factor, inverse=True), order=1, mode="nearest",
                        grid_mode=True)
    return frac >= 0.5


def downsample_affine(affine: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """Affine of the grid ``factor`` times coarser: along each axis voxel j centred at fine index f j + (f - 1)/2."""
    f = np.asarray(as_factor3(factor), dtype=np.float64)
    scale = np.diag([*f, 1.0])
    scale[:3, 3] = (f - 1) / 2.0
    return np.asarray(affine, dtype=np.float64) @ scale


def upsample_affine(affine: np.ndarray, factor: int | Sequence[int]) -> np.ndarray:
    """Affine of the grid ``factor`` times finer; the inverse of ``downsample_affine``."""
    f = np.asarray(as_factor3(factor), dtype=np.float64)
    scale = np.diag([*(1.0 / f), 1.0])
    scale[:3, 3] = -(f - 1) / (2.0 * f)
    return np.asarray(affine, dtype=np.float64) @ scale
