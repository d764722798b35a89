"""How the HR/LR pairs are made: as a scanner acquires them (``acquisition``), or the seed's way (``masked``).

``acquisition`` (the default): the LR is made from the whole head, before
any skull stripping, as a scanner acquires the whole field of view at low
resolution. The raw volume is degraded over its whole field of view
(``data.degrade``, the config's ``degrade.method``); the intensity scale is
read off that LR volume alone (``lr_scale``), so neither the HR's brain mask
nor its intensities shape the LR: by default (``normalise: brain``) the
``percentile`` of the LR's own brain, found on the LR grid by
``data.brain_extraction`` exactly as it is found on a scan at apply time;
or (``field_of_view``, the earlier rule) the ``percentile`` of its whole
field of view, which a bright scalp (T1 fat often outshines white matter)
pulls above the brain, putting the brain at half its usual intensity. The HR (the whole head,
not masked) and the LR are then cropped to the same box around the brain
(its start and size multiples of the factor, so the LR's crop is exactly the
HR box's coarse grid), divided by that scale and clipped to [0, 1]. The
brain mask is used for the box's place, for drawing training patches and for
scoring, never to shape the LR.

``masked`` (the seed's order, kept to reproduce the paper): the HR is masked
(zero outside the brain), normalised by its brain's percentile, and the LR
is made from that masked volume. The LR then carries the HR mask's sharp,
cortex-following edge, which no scanner produces: a model learns to redraw
it, and gains measured over the whole mask come largely from that edge
(docs/benchmarks.md, "The acquisition protocol").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrisr.data.brain_extraction import BrainExtractionError, extract_brain
from mrisr.data.degrade import Degradation, SliceProfile, as_factor3, downsample_affine, factor_label
from mrisr.data.skullstrip import brain_box
from mrisr.io import VolumeError, crop_or_pad

PROTOCOLS = ("acquisition", "masked")
NORMALISATIONS = ("brain", "field_of_view")


@dataclass(frozen=True)
class Acquisition:
    """The degradation a scan goes through (total factor per axis, spline order, method and slice profile:
    ``data.degrade``), and where its intensity scale is read on the LR (``normalise``: ``lr_scale``)."""

    factor: int | tuple[int, int, int]
    order: int = 3
    method: str = "spline"
    normalise: str = "brain"
    profile: SliceProfile = SliceProfile()

    @property
    def degradation(self) -> Degradation:
        return Degradation(self.order, self.method, self.profile)

    def lr_of_field_of_view(self, t1: np.ndarray) -> np.ndarray:
        """The whole field of view degraded, after zero-padding its sides to multiples of the factor."""
        pad = [(0, (-n) % f) for n, f in zip(t1.shape, as_factor3(self.factor))]
        return self.degradation.downsample(np.pad(t1.astype(np.float32), pad), self.factor)


# Normalised intensities below this are background or partial volume at the brain's edge, not tissue:
# the training data's intensity level and a scan's are read above it (``tissue_level``).
TISSUE_FLOOR = 0.1


def tissue_level(normalised: np.ndarray, brain: np.ndarray) -> float | None:
    """The median of a normalised volume's tissue inside ``brain`` (voxels above ``TISSUE_FLOOR``), or None
    where there is none: the intensity level a network trained on such volumes expects."""
    values = normalised[brain & (normalised > TISSUE_FLOOR)]
    return float(np.median(values)) if values.size else None


def lr_tissue_level(lr: np.ndarray, lr_affine: np.ndarray) -> float | None:
    """``tissue_level`` of a normalised LR volume inside the brain ``extract_brain`` finds on its grid (as
    ``mrisr super-resolve`` finds a scan's), or None where it finds none (voxels of 6 mm or coarser)."""
    try:
        brain = extract_brain(lr, lr_affine).mask
    except BrainExtractionError:
        return None
    return tissue_level(lr, brain)


def lr_scale(lr: np.ndarray, lr_affine: np.ndarray, percentile: float, normalise: str = "brain",
             path: str = "the LR volume") -> float:
    """The intensity scale of an acquisition, read off its LR volume (a scan as acquired) alone.

    ``brain``: the ``percentile`` of the LR's voxels inside its brain as
    ``extract_brain`` finds it on the LR grid; ``field_of_view``: the
    ``percentile`` of the whole field of view. ``VolumeError`` (naming
    ``path``) when the scale is not positive; ``BrainExtractionError`` when
    no brain can be found.
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalise!r}; allowed: {', '.join(NORMALISATIONS)}")
    if normalise == "brain":
        try:
            values, where = lr[extract_brain(lr, lr_affine).mask], "brain's"
        except BrainExtractionError as err:
            raise BrainExtractionError(f"{path}: no brain found to set the intensity scale by ({err}); "
                                       "skullstrip.normalise: field_of_view does without") from None
    else:
        values, where = lr, "field of view's"
    scale = float(np.percentile(values, percentile))
    if not scale > 0:
        raise VolumeError(f"{path}: the {where} {percentile}th intensity percentile is {scale:g}, not > 0")
    return scale


def aligned_box(mask: np.ndarray, affine: np.ndarray, margin_mm: float,
                factor: int | tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``skullstrip.brain_box`` with its start moved down and its end up to multiples of ``factor`` (per axis)."""
    start, shape = brain_box(mask, affine, margin_mm, factor)
    f3 = as_factor3(factor)
    lo = [int(math.floor(s / f) * f) for s, f in zip(start, f3)]
    hi = [int(math.ceil((s + n) / f) * f) for s, n, f in zip(start, shape, f3)]
    return tuple(lo), tuple(h - low for h, low in zip(hi, lo))


def crop_normalised(volume: np.ndarray, affine: np.ndarray, start, shape, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``volume`` (zeros beyond its edge) divided by ``scale`` and clipped to [0, 1], and its affine."""
    box, box_affine = crop_or_pad(volume, affine, tuple(start), tuple(shape))
    return np.clip(box / scale, 0.0, 1.0).astype(np.float32), box_affine


def acquired_lr(
    t1: np.ndarray, affine: np.ndarray, hr_start: tuple[int, ...], hr_shape: tuple[int, ...],
    acquisition: Acquisition, percentile: float, path: str = "the raw volume",
) -> tuple[np.ndarray, np.ndarray, float]:
    """The LR of the HR box at ``hr_start`` (raw voxels) of size ``hr_shape``: normalised, its affine, the scale
    (``lr_scale`` of the whole field of view's LR)."""
    f = as_factor3(acquisition.factor)
    if any(s % k for s, k in zip(hr_start, f)) or any(n % k for n, k in zip(hr_shape, f)):
        raise ValueError(f"HR box start {hr_start} and shape {hr_shape} are not multiples of the factor "
                         f"{factor_label(f)}")
    lr = acquisition.lr_of_field_of_view(t1)
    lr_affine = downsample_affine(affine, f)
    scale = lr_scale(lr, lr_affine, percentile, acquisition.normalise, path)
    out, box_affine = crop_normalised(lr, lr_affine, [s // k for s, k in zip(hr_start, f)],
                                      [n // k for n, k in zip(hr_shape, f)], scale)
    return out, box_affine, scale


def box_start(raw_affine: np.ndarray, box_affine: np.ndarray) -> tuple[int, ...]:
    """Where a box cut from a raw grid starts on it, from the two affines (``io.crop_or_pad`` translates only)."""
    offset = np.linalg.solve(raw_affine[:3, :3], box_affine[:3, 3] - raw_affine[:3, 3])
    start = np.round(offset).astype(int)
    if not np.allclose(offset, start, atol=1e-3) or not np.allclose(raw_affine[:3, :3], box_affine[:3, :3]):
        raise ValueError("the HR volume is not a box of the raw volume's grid (its affine is not a whole-voxel shift)")
    return tuple(int(s) for s in start)


def normalise_scan(data: np.ndarray, brain: np.ndarray, affine: np.ndarray, percentile: float, path: str,
                   protocol: str, normalise: str = "field_of_view") -> tuple[np.ndarray, float]:
    """A scan as acquired on a cascade's training intensity scale, and that scale (divide by it to go back).

    ``acquisition``: the whole field of view divided by ``lr_scale`` (by
    ``normalise``, as ``acquired_lr`` scales the training LR: the scan's own
    brain found on its grid, whatever ``brain`` says), clipped to [0, 1];
    ``masked``: divided by the brain's ``percentile`` and zero outside
    ``brain``. A scale that is not positive raises ``VolumeError`` naming ``path``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    if protocol == "acquisition":
        scale = lr_scale(data, affine, percentile, normalise, path)
        return np.clip(data / scale, 0.0, 1.0).astype(np.float32), scale
    scale = float(np.percentile(data[brain], percentile))
    if not scale > 0:
        raise VolumeError(f"{path}: the brain's {percentile}th intensity percentile is {scale:g}, not > 0")
    out = np.clip(data / scale, 0.0, 1.0).astype(np.float32)
    out[~brain] = 0.0
    return out, scale
