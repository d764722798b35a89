"""Skull stripping with a given brain mask, cropping and intensity normalisation.

The demo (and HCP, whose ``brainmask_fs`` ships with the data) provide a
brain mask, which is applied as it is. The stripped volume is cropped to the
mask's bounding box plus a margin, with sides rounded up to a multiple of the
workflow's total scale factor so that every cascade grid divides exactly
(``degrade``), and normalised so the brain's 99.5th percentile is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from typing import Sequence

import numpy as np

from mrisr.data.degrade import as_factor3
from mrisr.io import crop_or_pad, normalise_intensity, voxel_sizes


@dataclass(frozen=True)
class StrippedVolume:
    t1: np.ndarray  # float32 in [0, 1], zero outside the brain
    mask: np.ndarray  # uint8
    affine: np.ndarray


def brain_box(
    mask: np.ndarray, affine: np.ndarray, margin_mm: float, multiple: int | Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(start, shape) of the mask's bounding box grown by ``margin_mm`` and to sides divisible by ``multiple``
    (one for all axes, or one per axis).

    Growth to the multiple is split evenly on both sides, so the brain stays centred.
    """
    if not mask.any():
        raise ValueError("brain mask is empty")
    margin = np.ceil(margin_mm / voxel_sizes(affine)).astype(int)
    multiples = as_factor3(multiple)
    start, shape = [], []
    for axis, multiple in enumerate(multiples):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo, hi = int(hits[0]) - margin[axis], int(hits[-1]) + 1 + margin[axis]
        size = int(math.ceil((hi - lo) / multiple) * multiple)
        lo -= (size - (hi - lo)) // 2
        start.append(lo)
        shape.append(size)
    return tuple(start), tuple(shape)  # type: ignore[return-value]


def skullstrip_with_mask(
    t1: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    margin_mm: float = 4.0,
    multiple: int | Sequence[int] = 1,
    percentile: float = 99.5,
) -> StrippedVolume:
    """Apply a brain mask, crop to the brain (``brain_box``) and normalise (``io.normalise_intensity``)."""
    if t1.shape != mask.shape:
        raise ValueError(f"T1 shape {t1.shape} and mask shape {mask.shape} differ")
    mask = mask > 0
    start, shape = brain_box(mask, affine, margin_mm, multiple)
    t1_box, box_affine = crop_or_pad(t1, affine, start, shape)
    mask_box, _ = crop_or_pad(mask, affine, start, shape)
    return StrippedVolume(
        t1=normalise_intensity(t1_box, mask_box, percentile),
        mask=mask_box.astype(np.uint8),
        affine=box_affine,
    )
