"""Brain extraction (skull stripping) of a whole-head T1 when the data ship no brain mask.

A morphological method in the family of Shattuck et al.'s Brain Surface
Extractor (NeuroImage 2001): threshold, erode until the brain comes apart
from the scalp, keep the brain, grow it back, close it. Everything is done
with scipy/scikit-image on distance transforms in millimetres, so the same
settings work at 0.7, 1 or 2 mm voxels and on anisotropic grids.

1. Smooth with a Gaussian of ``smooth_mm`` and resample to voxels of at
   least ``working_mm`` (distance transforms dominate the cost; the mask is
   resampled back at the end). The head is the largest component brighter
   than 10 % of the way from the 2nd to the 98th intensity percentile (BET's
   background threshold), its holes filled in 3D and slice by slice (a field
   of view cut through the neck leaves the skull cavity open in 3D). ``depth`` is each voxel's
   distance (mm) from the head's surface or the field of view's border, so
   tissue the border cuts through (neck, face) counts as surface too.
2. The brain's typical intensity ``m`` is the median of the head's deepest
   bright region (above the lower of three Otsu classes, eroded by the
   largest radius of ``erosion_mm``). Candidate brain voxels are head voxels
   brighter than ``brain_fraction * m``: on T1, grey matter lies near 0.8 m
   and CSF and bone near 0.3 m, so 0.55 m splits them.
3. The candidates are eroded by each radius of ``erosion_mm`` in turn, and
   the largest eroded component is kept, until less than ``shallow_tolerance``
   of it lies within ``surface_mm`` + radius of the head's surface: the
   brain has then come apart from the scalp, marrow, muscle and neck, which
   all reach the surface or the border. No radius that separates them is an
   error, not a mask that leaks.
4. The component is dilated back by the radius (+ 1 mm) inside the
   candidates, closed by ``closing_mm`` (sulcal CSF) and its holes filled
   (ventricles).

Step 3 needs voxels finer than the smallest radius plus ``surface_mm``
(6 mm with the defaults): coarser, its shell near the surface holds no
voxel, so it cannot see the scalp, and the method refuses instead of
returning a mask that leaks (measured on Colin27 block-averaged to 6 and
8 mm: Dice 0.62 and 0.68 without this refusal; up to 5 mm, isotropic or in
thick slices, Dice 0.96 to 0.97: ``benchmarks/skullstrip_lowres.py``).

Measured against a known mask on real data in ``benchmarks/skullstrip.py``
(docs/benchmarks.md), where it is compared with ``brainextractor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from mrisr.io import InputError, voxel_sizes


class BrainExtractionError(InputError):
    """The brain could not be separated from the rest of the head."""


@dataclass(frozen=True)
class BrainExtraction:
    mask: np.ndarray  # bool, the brain
    erosion_mm: float  # the radius at which the brain came apart from the scalp
    brain_intensity: float  # the median intensity m the threshold is a fraction of
    volume_ml: float


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then in every 2D slice along each axis (cavities open at the FOV border)."""
    out = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        slices = [ndimage.binary_fill_holes(plane) for plane in np.moveaxis(out, axis, 0)]
        out = out | np.moveaxis(np.stack(slices), 0, axis)
    return out


def _dilate(mask: np.ndarray, radius_mm: float, sampling: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=sampling) <= radius_mm


def _erode(mask: np.ndarray, radius_mm: float, sampling: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=sampling) > radius_mm


@dataclass(frozen=True)
class ExtractionSettings:
    """The method's settings (module doc, steps 1-4); the defaults are the measured ones."""

    smooth_mm: float = 1.0
    brain_fraction: float = 0.55
    erosion_mm: Sequence[float] = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    surface_mm: float = 3.0
    shallow_tolerance: float = 0.01
    closing_mm: float = 6.0
    working_mm: float = 2.0


def extract_brain(
    t1: np.ndarray, affine: np.ndarray, settings: ExtractionSettings = ExtractionSettings()
) -> BrainExtraction:
    """Brain mask of a whole-head T1 volume (shape (X, Y, Z)); see the module docstring.

    Raises ``BrainExtractionError`` when no erosion radius separates the
    brain from the scalp (for example on an image that is already skull-stripped:
    give such images their mask instead).
    """
    if t1.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {t1.shape}")
    radii = sorted(float(r) for r in settings.erosion_mm)
    if not radii or radii[0] <= 0:
        raise ValueError(f"erosion_mm must be positive radii, got {list(settings.erosion_mm)}")
    native_sampling = voxel_sizes(affine)
    smooth = ndimage.gaussian_filter(t1.astype(np.float32), settings.smooth_mm / native_sampling)
    # Work on a grid no finer than working_mm: distance transforms dominate the cost.
    native_shape = np.array(t1.shape)
    work_shape = np.maximum(np.round(native_shape * np.minimum(native_sampling / settings.working_mm, 1.0)), 1).astype(int)
    sampling = native_sampling * native_shape / work_shape
    if np.any(work_shape != native_shape):
        smooth = ndimage.zoom(smooth, work_shape / native_shape, order=1, grid_mode=True, mode="nearest")
    # The separation test (step 3) looks for the eroded brain within radius + surface_mm of the head's
    # surface: with voxels that deep the shell holds no voxel and every mask "separates", scalp and all
    # (measured: masks leak from 6 mm voxels on Colin27; benchmarks/skullstrip_lowres.py).
    if sampling.max() >= radii[0] + settings.surface_mm:
        raise BrainExtractionError(
            f"voxels of up to {sampling.max():.3g} mm are too coarse to tell the brain from the scalp: the method "
            f"needs them below {radii[0] + settings.surface_mm:g} mm (masks leak beyond, "
            "docs/benchmarks.md); give the scan's brain mask instead"
        )
    p2, p98 = np.percentile(smooth, [2, 98])
    if not p98 > p2:
        raise BrainExtractionError("the volume is (nearly) constant: there is no head to find")
    smooth = np.clip(smooth, p2, p98)

    head = _fill_holes_slicewise(_largest_component(smooth > p2 + 0.1 * (p98 - p2)))
    # Padding with background makes the field-of-view border count as surface.
    depth = ndimage.distance_transform_edt(np.pad(head, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]

    bright = head & (smooth > threshold_multiotsu(smooth[head], classes=3)[0])
    deep_bright = _largest_component(_erode(bright, radii[-1], sampling))
    if not deep_bright.any():
        raise BrainExtractionError(f"no bright region survives an erosion of {radii[-1]} mm: is this a head?")
    brain_intensity = float(np.median(smooth[deep_bright]))

    candidates = head & (smooth > settings.brain_fraction * brain_intensity)
    inside = ndimage.distance_transform_edt(candidates, sampling=sampling)
    shallow = []
    for radius in radii:
        core = _largest_component(inside > radius)
        if not core.any():
            break
        shallow.append(float(np.mean(depth[core] < radius + settings.surface_mm)))
        if shallow[-1] < settings.shallow_tolerance:
            break
    else:
        core = None
    if core is None or not core.any():
        tried = ", ".join(f"{r:g} mm: {100 * f:.1f} %" for r, f in zip(radii, shallow))
        raise BrainExtractionError(
            "the brain could not be separated from the scalp (share of the eroded brain near the "
            f"head's surface at each erosion radius: {tried}); is this a whole-head T1? "
            "Images that are already skull-stripped need their mask given instead"
        )

    brain = _largest_component(_dilate(core, radius + 1.0, sampling) & candidates)
    closed = _erode(_dilate(brain, settings.closing_mm, sampling), settings.closing_mm, sampling)
    brain = ndimage.binary_fill_holes(closed | brain)
    if np.any(work_shape != native_shape):
        zoomed = ndimage.zoom(brain.astype(np.float32), native_shape / work_shape, order=1, grid_mode=True, mode="nearest")
        brain = zoomed >= 0.5
    volume_ml = float(brain.sum() * np.prod(native_sampling) / 1000.0)
    return BrainExtraction(mask=brain, erosion_mm=radius, brain_intensity=brain_intensity, volume_ml=volume_ml)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|) of two masks (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
