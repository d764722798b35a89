"""The embedded demo cohort: real brains (default) or the MNI152 template, in a synthetic head.

Two anatomies (``demo.anatomy``):

- ``real`` (the default): demo subject k is the k-th of 12 real, individual
  brains shipped in the package (OpenNeuro ds002748, CC0; ``data.cohort``),
  so train, validation and test subjects are different people. Each brain
  gets a mild gamma (0.9-1.1) and, on grids coarser than its 2 mm, the
  point-spread function of the new voxel size.
- ``template``: every subject is the MNI152 2009c nonlinear symmetric T1
  template shipped in nilearn (197 x 233 x 189, 1 mm), pushed through a random
  pose (rotations up to 4 degrees, scaling up to 5 %, shifts up to 2 mm), a
  smooth deformation (up to ~3 mm), grey/white contrast changes of up to 8 %
  and a gamma of 0.8-1.2: one smooth, averaged anatomy, kept for tests and
  comparison.

Either way the brain is then wrapped in a head (``HEAD_LAYERS``: CSF, skull,
marrow, muscle, fat and skin at their usual T1 thickness, each boundary
wandering by up to 1 mm; with ``real`` their brightness varies between
subjects, fat from 0.8 to 1.6 times white matter, as real T1 fat often
outshines it), so that the LR is made from a whole head as a scanner's is
(``data.protocol``); the brain mask stays exact. Then a smooth multiplicative
bias field (about +-15 %), a scanner scale, and Rician noise at 1-2 % of
white matter. The same (index, seed, voxel size, anatomy) always gives the
same subject.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrisr.data import cohort

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
ANATOMIES = ("real", "template")

# The layers of a head around the brain: (name, T1 brightness relative to white matter, thickness in mm),
# brain outwards (also data/phantom.py's). ``HEAD_BRIGHTNESS_RANGE``: the range each layer's brightness is drawn
# from for a real-anatomy subject.
HEAD_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("csf", 0.25, 3.0),
    ("inner table", 0.08, 1.5),
    ("marrow", 0.55, 2.0),
    ("outer table", 0.08, 1.5),
    ("muscle", 0.45, 2.0),
    ("fat", 0.95, 4.0),
    ("skin", 0.50, 1.0),
)
HEAD_BRIGHTNESS_RANGE: tuple[tuple[float, float], ...] = (
    (0.15, 0.35), (0.04, 0.12), (0.40, 0.90), (0.04, 0.12), (0.35, 0.60), (0.80, 1.60), (0.35, 0.70),
)


@dataclass(frozen=True)
class DemoSubject:
    """One synthetic subject: T1 in arbitrary scanner units, brain mask, shared affine."""

    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 1 mm MNI152 T1, brain mask, GM and WM maps from nilearn's package data."""
    from nilearn import datasets

    images = {
        "t1": datasets.load_mni152_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
    }
    arrays = {name: np.asarray(img.get_fdata(), dtype=np.float32) for name, img in images.items()}
    return arrays, np.asarray(images["t1"].affine, dtype=np.float64)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], control: int) -> np.ndarray:
    """A smooth random field in [-1, 1] (max |value| = 1): noise on a coarse grid, cubic-upsampled."""
    coarse = ndimage.gaussian_filter(rng.standard_normal((control,) * 3), sigma=1.0, mode="wrap")
    field = ndimage.zoom(coarse, [s / control for s in shape], order=3, mode="nearest", grid_mode=True)
    field = field[: shape[0], : shape[1], : shape[2]]
    return field / max(float(np.abs(field).max()), 1e-12)


def make_demo_subject(index: int, seed: int = 0, voxel_size_mm: float = 2.0, noise: bool = True,
                      anatomy: str = "real", cohort_dir=None) -> DemoSubject:
    """Demo subject ``index`` of the ``anatomy`` (see the module docstring): whole head, scanner units.

    ``cohort_dir``: the real brains' folder (default: the shipped cohort; benchmarks give real validation
    brains written by ``tools/build_demo_cohort.py``).

    ``noise=False`` returns the same subject before its Rician noise (every
    other draw identical): the noise-free volume that tells how much of an SR
    error is the HR's own noise, which no model can predict.
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    if anatomy not in ANATOMIES:
        raise ValueError(f"unknown demo anatomy {anatomy!r}; allowed: {', '.join(ANATOMIES)}")
    low = 2.0 if anatomy == "real" else 1.0
    if not low <= voxel_size_mm <= 4.0:
        raise ValueError(f"voxel_size_mm must lie in [{low:g}, 4] for the {anatomy} anatomy, got {voxel_size_mm}")
    rng = np.random.default_rng([int(seed), int(index)])
    if anatomy == "real":
        brain, mask, affine, layers = _real_brain(index, float(voxel_size_mm), rng, cohort_dir or cohort.COHORT_DIR)
    else:
        brain, mask, affine = _template_brain(float(voxel_size_mm), rng)
        layers = np.array([b for _, b, _ in HEAD_LAYERS], dtype=np.float32)
    t1 = wrap_in_head(brain, mask, float(voxel_size_mm), rng, layers)
    t1 = t1 * np.exp(0.15 * smooth_field(rng, t1.shape, control=3))
    t1 = 1000.0 * rng.uniform(0.8, 1.2) * t1
    # noise: of white matter (real), of the maximum as it always was (template)
    noise_sd = rng.uniform(0.01, 0.02) * float(np.percentile(t1[mask], 99) if anatomy == "real" else t1.max())
    if not noise:
        return DemoSubject(t1=t1.astype(np.float32), mask=mask.astype(np.uint8), affine=affine)
    real = t1 + noise_sd * rng.standard_normal(t1.shape)
    imag = noise_sd * rng.standard_normal(t1.shape)
    t1 = np.sqrt(real**2 + imag**2).astype(np.float32)
    return DemoSubject(t1=t1, mask=mask.astype(np.uint8), affine=affine)


def _real_brain(index: int, v: float, rng: np.random.Generator,
                directory) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shipped brain ``index`` on ``v`` mm voxels in a field of view with room for the head (none below: the
    neck leaves it), a gamma applied; and its head layers' brightness. (brain, mask, affine, brightness)."""
    n = cohort.n_brains(directory)
    if index >= n:
        raise ValueError(f"the real demo anatomy has {n} subjects (demo.n_subjects <= {n}); "
                         f"there is no subject {index + 1}")
    brain, affine = cohort.load_brain(index, directory)
    mask = brain > 0
    if v != 2.0:
        brain, mask, affine = cohort.resample_brain(brain, mask, affine, v)
    brain = np.where(mask, brain, 0.0) ** rng.uniform(0.9, 1.1)
    pad = int(np.ceil((sum(t for _, _, t in HEAD_LAYERS) + 6.0) / v))
    widths = ((pad, pad), (pad, pad), (0, pad))
    shift = np.eye(4)
    shift[:3, 3] = [-pad, -pad, 0]
    layers = np.array([rng.uniform(lo, hi) for lo, hi in HEAD_BRIGHTNESS_RANGE], dtype=np.float32)
    return (np.pad(brain, widths).astype(np.float32), np.pad(mask, widths), affine @ shift, layers)


def _template_brain(v: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 template through a random pose, deformation and contrast, on ``v`` mm voxels over its field of
    view: (brain, mask, affine)."""
    templates, template_affine = _templates()

    # Output grid: boxes of v mm over the template's field of view.
    shape = tuple(int(np.floor(n / v)) for n in templates["t1"].shape)
    grid = np.diag([v, v, v, 1.0])
    grid[:3, 3] = (v - 1.0) / 2.0
    affine = template_affine @ grid

    # World coordinates of the output voxel centres, (3, N).
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]

    # Pose about the brain's centre, then a smooth deformation (mm).
    centre = template_affine[:3, :3] @ (np.array(templates["t1"].shape) / 2.0) + template_affine[:3, 3]
    rotation = _rotation(np.deg2rad(rng.uniform(-4, 4, size=3)))
    scaling = np.diag(rng.uniform(0.95, 1.05, size=3))
    shift = rng.uniform(-2, 2, size=3)
    source = (rotation @ scaling) @ (world - centre[:, None]) + centre[:, None] + shift[:, None]
    amplitude = rng.uniform(2.0, 3.0)
    for axis in range(3):
        source[axis] += amplitude * smooth_field(rng, shape, control=6).reshape(-1)
    inv = np.linalg.inv(template_affine)
    coords = inv[:3, :3] @ source + inv[:3, 3:4]

    # Sample each map through the point-spread function of the new voxel size.
    sigma = FWHM_TO_SIGMA * np.sqrt(max(v * v - 1.0, 0.0))

    def resample(name: str, order: int) -> np.ndarray:
        data = ndimage.gaussian_filter(templates[name], sigma) if sigma > 0 else templates[name]
        out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=0.0)
        return out.reshape(shape).astype(np.float32)

    t1 = np.clip(resample("t1", 3), 0.0, None)
    mask = resample("mask", 1) >= 0.5
    gm, wm = np.clip(resample("gm", 1), 0, 1), np.clip(resample("wm", 1), 0, 1)

    # Contrast.
    t1 = t1 ** rng.uniform(0.8, 1.2)
    t1 = t1 * (1.0 + rng.uniform(-0.08, 0.08) * gm + rng.uniform(-0.08, 0.08) * wm)
    return t1, mask, affine


def wrap_in_head(brain: np.ndarray, mask: np.ndarray, voxel_mm: float, rng: np.random.Generator,
                 brightness: np.ndarray | None = None) -> np.ndarray:
    """``brain`` inside ``mask``; outside it the ``HEAD_LAYERS`` by distance from the brain (mm), each boundary
    displaced by a smooth random field of up to +-1 mm, brightness (each layer's, default ``HEAD_LAYERS``')
    relative to the brain's 99th percentile."""
    white = float(np.percentile(brain[mask], 99))
    outside = ndimage.distance_transform_edt(~mask, sampling=voxel_mm).astype(np.float32)
    outside += smooth_field(rng, mask.shape, control=5)
    layer = np.searchsorted(np.cumsum([t for _, _, t in HEAD_LAYERS]), outside)
    if brightness is None:
        brightness = np.array([b for _, b, _ in HEAD_LAYERS], dtype=np.float32)
    levels = white * np.append(np.asarray(brightness, dtype=np.float32), 0.0)
    return np.where(mask, brain, levels[layer]).astype(np.float32)


def demo_subject_ids(n_subjects: int) -> list[str]:
    """Subject IDs of the demo cohort: demo01, demo02, ..."""
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    return [f"demo{i + 1:02d}" for i in range(n_subjects)]


def demo_subject_index(subject: str) -> int:
    """The index behind a demo subject ID (``demo03`` -> 2)."""
    if not (subject.startswith("demo") and subject[4:].isdigit()):
        raise ValueError(f"{subject!r} is not a demo subject ID (demo01, demo02, ...)")
    return int(subject[4:]) - 1


# Where ``write_demo_bids`` puts thick-slice scans' brain masks, under the dataset's root (a local.mask pattern).
THICK_SLICE_MASKS = "derivatives/masks/{subject}_desc-brain_mask.nii.gz"


def write_demo_bids(root, n_subjects: int = 3, voxel_size_mm: float = 4.0, seed: int = 1,
                    thick_slice: int = 1, slice_axis: int = 2) -> list:
    """A small BIDS dataset of whole-head demo scans as acquired, for trying apply mode on scans no demo
    model saw (the template anatomy, under another ``seed`` than the training cohort's 0, so no person the
    real-anatomy demo trained on): ``sub-01``, ``sub-02`` ... at ``voxel_size_mm``;
    every even-numbered subject has two sessions (``ses-1``, ``ses-2``). With ``thick_slice`` > 1 the scans
    are thick-slice acquisitions: slices ``thick_slice`` times thicker along voxel axis ``slice_axis`` (the
    ``slice`` degradation, a Gaussian profile), with a sidecar giving SliceThickness and
    SpacingBetweenSlices, and their brain masks (on the scan's grid: brain extraction refuses slices of
    6 mm or more) under ``derivatives/masks/<scan>_desc-brain_mask.nii.gz``, for ``local.mask``
    (``THICK_SLICE_MASKS``). Returns the T1w files written."""
    import json
    from pathlib import Path

    from mrisr.data.bids import write_json
    from mrisr.data.degrade import downsample_affine, downsample_mask
    from mrisr.data.protocol import Acquisition
    from mrisr.io import atomic_path, save_volume

    if thick_slice < 1 or slice_axis not in (0, 1, 2):
        raise ValueError(f"thick_slice must be >= 1 and slice_axis 0, 1 or 2, got {thick_slice} and {slice_axis}")
    factor = tuple(thick_slice if axis == slice_axis else 1 for axis in range(3))

    root = Path(root)
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    with atomic_path(root / "dataset_description.json") as tmp:
        tmp.write_text(json.dumps({"Name": "mrisr demo scans", "BIDSVersion": "1.10.0", "DatasetType": "raw"},
                                  indent=2) + "\n")
    written, index = [], 0
    for number in range(1, n_subjects + 1):
        sessions = ["ses-1", "ses-2"] if number % 2 == 0 else [None]
        for session in sessions:
            sub = make_demo_subject(index, seed=seed, voxel_size_mm=voxel_size_mm, anatomy="template")
            index += 1
            prefix = f"sub-{number:02d}" + (f"_{session}" if session else "")
            folder = root / f"sub-{number:02d}" / (session or "") / "anat"
            written.append(folder / f"{prefix}_T1w.nii.gz")
            if thick_slice == 1:
                save_volume(written[-1], sub.t1, sub.affine)
                continue
            thick = Acquisition(factor, method="slice").lr_of_field_of_view(sub.t1)
            save_volume(written[-1], thick, downsample_affine(sub.affine, factor))
            pad = [(0, (-n) % f) for n, f in zip(sub.mask.shape, factor)]
            mask = downsample_mask(np.pad(sub.mask > 0, pad), factor).astype(np.uint8)
            save_volume(root / THICK_SLICE_MASKS.format(subject=prefix), mask, downsample_affine(sub.affine, factor),
                        dtype=np.uint8)
            spacing = float(voxel_size_mm * thick_slice)
            write_json(folder / f"{prefix}_T1w.json", {"SliceThickness": spacing, "SpacingBetweenSlices": spacing})
    return written
