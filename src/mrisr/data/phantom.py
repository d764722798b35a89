"""A whole-head T1 phantom with a known brain mask, for testing brain extraction offline.

The brain is the real MNI152 2009 T1 template shipped in nilearn (already
skull-stripped; read from the package's data with nibabel, which is faster
than importing nilearn), and the brain mask is where it is non-zero. Around it the phantom wraps the
layers of a head at their usual T1 brightness (relative to white matter = 1)
and thickness, each boundary displaced by a smooth random field of up to
+-1 mm: CSF (0.25, 3 mm), the skull's inner table (0.08, 1.5 mm), marrow
(0.55, 2 mm), outer table (0.08, 1.5 mm), muscle (0.45, 2 mm), subcutaneous
fat (0.95, 4 mm) and skin (0.5, 1 mm). The field of view is cut through the
neck at the template's lower edge, as a scan's is. Then a smooth bias field
(+-10 %) and Rician noise (2 % of white matter). Voxels are the 1 mm voxels averaged in
blocks of ``voxel_size_mm`` (a box point-spread function).

It is easier than a real head (no eyes, sinuses, neck muscles or dura) and
it is not real data: the real-data figures come from ``benchmarks/skullstrip.py``.
The brain mask is exact, which makes it a fair regression test.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrisr.data.demo import HEAD_LAYERS, smooth_field

MNI_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

@dataclass(frozen=True)
class HeadPhantom:
    t1: np.ndarray  # float32, arbitrary units (white matter about 1000)
    mask: np.ndarray  # uint8, the brain
    affine: np.ndarray


@functools.lru_cache(maxsize=1)
def mni_t1_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm MNI152 2009 T1 template (197 x 233 x 189, skull-stripped) shipped in nilearn, and its affine."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("nilearn is not installed; it ships the MNI152 template the phantom is made from")
    img = nib.load(Path(spec.origin).parent / "datasets" / "data" / MNI_T1_FILE)
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def _block_mean(volume: np.ndarray, size: int) -> np.ndarray:
    shape = [n // size for n in volume.shape]
    cropped = volume[: shape[0] * size, : shape[1] * size, : shape[2] * size]
    return cropped.reshape(shape[0], size, shape[1], size, shape[2], size).mean(axis=(1, 3, 5))


def make_head_phantom(voxel_size_mm: int = 2, seed: int = 0) -> HeadPhantom:
    """A head phantom on an isotropic grid of ``voxel_size_mm`` (1, 2, 3 or 4 mm); see the module docstring."""
    if voxel_size_mm not in (1, 2, 3, 4):
        raise ValueError(f"voxel_size_mm must be 1, 2, 3 or 4, got {voxel_size_mm}")
    template, template_affine = mni_t1_1mm()
    rng = np.random.default_rng(seed)
    brain_mask = ndimage.binary_fill_holes(template > 0)
    brain = np.where(brain_mask, template / np.percentile(template[brain_mask], 99), 0.0)

    # Room for the layers on every side but the bottom (the neck leaves the field of view).
    pad = int(np.ceil(sum(t for _, _, t in HEAD_LAYERS) + 6))
    widths = ((pad, pad), (pad, pad), (0, pad))
    brain_mask = np.pad(brain_mask, widths)
    head = np.pad(brain, widths).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [-pad, -pad, 0]
    affine_1mm = template_affine @ shift

    # Distance (mm) outside the brain; each boundary wanders by up to 1 mm.
    outside = ndimage.distance_transform_edt(~brain_mask).astype(np.float32)
    wander = smooth_field(rng, tuple(max(2, n // 8) for n in outside.shape), control=5)
    outside += ndimage.zoom(wander, np.divide(outside.shape, wander.shape), order=1, grid_mode=True, mode="nearest")[
        : outside.shape[0], : outside.shape[1], : outside.shape[2]
    ]
    edges = np.cumsum([t for _, _, t in HEAD_LAYERS])
    layer = np.searchsorted(edges, outside)  # 0 = the first layer, len(edges) = outside the head
    brightness = np.array([b for _, b, _ in HEAD_LAYERS] + [0.0], dtype=np.float32)
    head = np.where(brain_mask, head, brightness[layer])

    v = int(voxel_size_mm)
    head = _block_mean(head, v)
    brain_mask = _block_mean(brain_mask.astype(np.float32), v) >= 0.5
    grid = np.diag([v, v, v, 1.0])
    grid[:3, 3] = (v - 1.0) / 2.0
    affine = affine_1mm @ grid

    bias = smooth_field(rng, head.shape, control=3)
    head = head * np.exp(0.1 * bias) * 1000.0
    noise_sd = 0.02 * 1000.0
    real = head + noise_sd * rng.standard_normal(head.shape)
    imag = noise_sd * rng.standard_normal(head.shape)
    t1 = np.sqrt(real**2 + imag**2).astype(np.float32)
    return HeadPhantom(t1=t1, mask=brain_mask.astype(np.uint8), affine=affine)
