"""A whole-head T1 phantom with a known brain mask, for testing brain extraction offline.

The brain is the real MNI152 2009 T1 template shipped in nilearn (already
skull-stripped), inside its own brain mask. Around it the phantom wraps the
layers of a head at their usual T1 brightness (relative to white matter = 1)
and thickness, each boundary displaced by a smooth random field of up to
+-1 mm: CSF (0.25, 3 mm), the skull's inner table (0.08, 1.5 mm), marrow
(0.55, 2 mm), outer table (0.08, 1.5 mm), muscle (0.45, 2 mm), subcutaneous
fat (0.95, 4 mm) and skin (0.5, 1 mm). The field of view is cut through the
neck at the template's lower edge, as a scan's is. Then a Gaussian
point-spread function of one voxel, a smooth bias field (+-10 %) and Rician
noise (2 % of white matter).

It is easier than a real head (no eyes, sinuses, neck muscles or dura) and
it is not real data: the real-data figures come from ``benchmarks/skullstrip.py``.
The brain mask is exact, which makes it a fair regression test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrisr.data.demo import FWHM_TO_SIGMA, _smooth_field, _templates

# (name, T1 brightness relative to white matter, thickness in mm), brain outwards.
HEAD_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("csf", 0.25, 3.0),
    ("inner table", 0.08, 1.5),
    ("marrow", 0.55, 2.0),
    ("outer table", 0.08, 1.5),
    ("muscle", 0.45, 2.0),
    ("fat", 0.95, 4.0),
    ("skin", 0.50, 1.0),
)


@dataclass(frozen=True)
class HeadPhantom:
    t1: np.ndarray  # float32, arbitrary units (white matter about 1000)
    mask: np.ndarray  # uint8, the brain
    affine: np.ndarray


def make_head_phantom(voxel_size_mm: float = 2.0, seed: int = 0) -> HeadPhantom:
    """A head phantom on an isotropic grid of ``voxel_size_mm`` (1 to 4 mm); see the module docstring."""
    if not 1.0 <= voxel_size_mm <= 4.0:
        raise ValueError(f"voxel_size_mm must lie in [1, 4], got {voxel_size_mm}")
    templates, template_affine = _templates()
    rng = np.random.default_rng(seed)
    brain_mask = templates["mask"] > 0.5
    brain = np.where(brain_mask, templates["t1"] / np.percentile(templates["t1"][brain_mask], 99), 0.0)

    # Room for the layers on every side but the bottom (the neck leaves the field of view).
    pad = int(np.ceil(sum(t for _, _, t in HEAD_LAYERS) + 6))
    widths = ((pad, pad), (pad, pad), (0, pad))
    brain_mask = np.pad(brain_mask, widths)
    head = np.pad(brain, widths).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [-pad, -pad, 0]
    affine_1mm = template_affine @ shift

    outside = ndimage.distance_transform_edt(~brain_mask)  # mm on the 1 mm grid
    outside += _smooth_field(rng, outside.shape, control=5)  # boundaries wander by up to 1 mm
    edge = 0.0
    for _, brightness, thickness in HEAD_LAYERS:
        layer = ~brain_mask & (outside > edge) & (outside <= edge + thickness)
        head[layer] = brightness
        edge += thickness

    v = float(voxel_size_mm)
    sigma = FWHM_TO_SIGMA * v
    head = ndimage.gaussian_filter(head, sigma)
    if v != 1.0:
        head = ndimage.zoom(head, 1.0 / v, order=1, grid_mode=True, mode="nearest")
        frac = ndimage.zoom(brain_mask.astype(np.float32), 1.0 / v, order=1, grid_mode=True, mode="nearest")
        brain_mask = frac >= 0.5
    grid = np.diag([v, v, v, 1.0])
    grid[:3, 3] = (v - 1.0) / 2.0
    affine = affine_1mm @ grid

    head = head * np.exp(0.1 * _smooth_field(rng, head.shape, control=3)) * 1000.0
    noise_sd = 0.02 * 1000.0
    real = head + noise_sd * rng.standard_normal(head.shape)
    imag = noise_sd * rng.standard_normal(head.shape)
    t1 = np.sqrt(real**2 + imag**2).astype(np.float32)
    return HeadPhantom(t1=t1, mask=brain_mask.astype(np.uint8), affine=affine)
