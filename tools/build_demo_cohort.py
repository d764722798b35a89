"""Build the embedded real demo cohort from OpenNeuro ds002748 (CC0): brains at 2 mm, uint8 NIfTI.

    python tools/build_demo_cohort.py ../shared/data/ds002748 src/mrisr/data/cohort --subjects 1-12

Each subject's brain-extracted T1w (0.87 x 0.87 x 1 mm, zero outside the
brain) is reoriented to RAS (``nibabel.as_closest_canonical``), resampled to
2 mm isotropic voxels through a Gaussian point-spread function whose FWHM
makes up the difference between the voxel sizes (sqrt(2^2 - v^2) mm per
axis), by normalised convolution inside the brain (the filtered brain over
the filtered mask, so the edge is not darkened by the zeros around it),
cropped to the brain's box plus one voxel
(``mrisr.data.cohort.resample_brain``), scaled by the brain's 99.9th
percentile and stored as uint8 with the brain at >= 1 and 0 outside: the
brain mask is the non-zero region (``mrisr.data.cohort``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrisr.data.cohort import resample_brain

VOXEL_MM = 2.0


def crop_resampled(img: nib.Nifti1Image, voxel_mm: float = VOXEL_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(brain in the source's units, its mask, affine) on ``voxel_mm`` voxels in RAS, cropped to the brain + 1 voxel."""
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    brain, mask, affine = resample_brain(data, ndimage.binary_fill_holes(data > 0), img.affine, voxel_mm)
    lo = np.maximum(np.argwhere(mask).min(axis=0) - 1, 0)
    hi = np.minimum(np.argwhere(mask).max(axis=0) + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    return brain[box], mask[box], affine @ shift


def to_uint8(brain: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The brain scaled by its 99.9th percentile to 1..255 inside the mask, 0 outside."""
    scale = float(np.percentile(brain[mask], 99.9))
    out = np.clip(np.rint(255.0 * brain / scale), 1, 255)
    return np.where(mask, out, 0).astype(np.uint8)


def parse_subjects(text: str) -> list[int]:
    numbers: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        numbers.extend(range(int(lo), int(hi or lo) + 1))
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="ds002748's root (sub-XX/anat/sub-XX_T1w.nii.gz)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--subjects", default="1-12", help="subject numbers, e.g. 1-12 or 1,3,5")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    listing = []
    for k, number in enumerate(parse_subjects(args.subjects)):
        src = args.source / f"sub-{number:02d}" / "anat" / f"sub-{number:02d}_T1w.nii.gz"
        brain, mask, affine = crop_resampled(nib.load(src))
        name = f"brain{k + 1:02d}.nii.gz"
        image = nib.Nifti1Image(to_uint8(brain, mask), affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, args.out / name)
        listing.append({"file": name, "source": f"ds002748/sub-{number:02d}", "shape": list(brain.shape),
                        "brain_ml": round(float(mask.sum()) * VOXEL_MM**3 / 1000, 1)})
        print(name, listing[-1])
    (args.out / "cohort.json").write_text(json.dumps({"dataset": "OpenNeuro ds002748 v1.0.5", "voxel_mm": VOXEL_MM,
                                                      "subjects": listing}, indent=1) + "\n")


if __name__ == "__main__":
    main()
