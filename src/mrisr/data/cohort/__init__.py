"""The embedded real demo cohort: 12 brains of OpenNeuro ds002748 (CC0) at 2 mm, and resampling them.

The files beside this module (``brain01.nii.gz`` ...) are uint8 brains whose
non-zero region is the brain mask; README.md there gives the dataset, its
licence and citation, and how they were made (``tools/build_demo_cohort.py``,
which uses ``resample_brain`` below).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

COHORT_DIR = Path(__file__).parent
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
DATASET = {
    "name": "OpenNeuro ds002748 v1.0.5 (Bezmaternykh et al.)",
    "doi": "10.18112/openneuro.ds002748.v1.0.5",
    "license": "CC0",
    "citation": "Bezmaternykh D.D. et al., Neural Plasticity 2021, 8846097, doi:10.1155/2021/8846097",
}


@functools.lru_cache(maxsize=4)
def listing(directory: Path = COHORT_DIR) -> list[dict]:
    """The brains of a cohort folder (default: the shipped one), in order: file name, source subject, shape
    (``cohort.json``). Benchmarks give another folder that ``tools/build_demo_cohort.py`` wrote."""
    return json.loads((Path(directory) / "cohort.json").read_text())["subjects"]


def n_brains(directory: Path = COHORT_DIR) -> int:
    return len(listing(directory))


@functools.lru_cache(maxsize=16)
def load_brain(index: int, directory: Path = COHORT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Brain ``index`` (0-based) of a cohort folder: float32 in [0, 1] (0 outside the brain), its 2 mm affine."""
    brains = listing(directory)
    if not 0 <= index < len(brains):
        raise ValueError(f"the real demo cohort has {len(brains)} brains; there is no brain {index + 1}")
    img = nib.load(Path(directory) / brains[index]["file"])
    data = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    data.setflags(write=False)
    return data, np.asarray(img.affine, dtype=np.float64)


def resample_brain(
    brain: np.ndarray, mask: np.ndarray, affine: np.ndarray, voxel_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brain on a grid of ``voxel_mm`` isotropic voxels over the same field of view: (brain, mask, affine).

    The point-spread function is a Gaussian whose FWHM makes up the difference
    between the voxel sizes, sqrt(voxel_mm^2 - v^2) per axis; the brain is
    resampled by normalised convolution inside ``mask`` (the filtered brain
    over the filtered mask), so the zeros outside it do not darken its edge,
    and the new mask is where the filtered mask is >= 0.5. New voxel i is
    centred at old index (s - 1) / 2 + s i, s = voxel_mm / v, as a grid of
    larger voxels starting at the same corner.
    """
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    if np.any(voxel_mm < zooms - 1e-6):
        raise ValueError(f"cannot resample voxels of {zooms.round(3).tolist()} mm to finer ones of {voxel_mm} mm")
    inside = mask.astype(bool)
    sigma = FWHM_TO_SIGMA * np.sqrt(np.maximum(voxel_mm**2 - zooms**2, 0.0)) / zooms
    num = ndimage.gaussian_filter(np.where(inside, brain, 0.0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
    step = voxel_mm / zooms
    shape = np.floor(np.array(brain.shape) / step).astype(int)
    origin = (step - 1.0) / 2.0
    coords = np.stack(np.meshgrid(*[origin[a] + step[a] * np.arange(shape[a]) for a in range(3)], indexing="ij"))
    fine_num = ndimage.map_coordinates(num, coords, order=1)
    fine_den = ndimage.map_coordinates(den, coords, order=1)
    new_mask = fine_den >= 0.5
    new_brain = np.where(new_mask, fine_num / np.maximum(fine_den, 1e-6), 0.0).astype(np.float32)
    grid = np.diag([*step, 1.0])
    grid[:3, 3] = origin
    return new_brain, new_mask, np.asarray(affine, dtype=np.float64) @ grid
