"""Brain extraction at the resolutions apply mode receives: where does it stop working?

Apply mode (README, "Apply a trained model to your dataset") gets whole-head
scans as acquired, often 2-5 mm, and estimates their brain mask with
``mrisr.data.brain_extraction.extract_brain`` when the source ships none.
This measures the method on whole-head volumes with a known brain mask,
block-averaged from 1 mm to coarser voxels (a box point-spread function;
the mask is the block mean of the 1 mm mask >= 0.5), isotropic and
thick-slice:

- Colin27 (real: one subject, 27 averaged 1 mm scans, whole head; reference
  ``ch2bet > 0`` with holes filled), from Debian's ``mricron-data`` package
  (see ``benchmarks/skullstrip.py``);
- the head phantom (``mrisr.data.phantom``, MNI152 brain in synthetic head layers);
- demo subject 1 at 1 mm (``mrisr.data.demo``, what the tests block-average).

A run that refuses to give a mask is a row with dice "error" and the
method's message. Single-threaded.

    .venv/bin/python benchmarks/skullstrip_lowres.py [--templates /usr/share/mricron/templates]

Writes benchmarks/results/skullstrip_lowres.tsv.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr.data.brain_extraction import BrainExtractionError, dice, extract_brain  # noqa: E402
from mrisr.data.demo import make_demo_subject  # noqa: E402
from mrisr.data.phantom import make_head_phantom  # noqa: E402
from mrisr.io import voxel_sizes  # noqa: E402

BLOCKS = ((1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4), (5, 5, 5), (6, 6, 6), (8, 8, 8), (1, 1, 3), (1, 1, 5))


def block_mean(volume: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Means over blocks of ``block`` voxels (the edge that does not fill a block is dropped)."""
    shape = [n // b for n, b in zip(volume.shape, block)]
    cropped = volume[: shape[0] * block[0], : shape[1] * block[1], : shape[2] * block[2]].astype(np.float32)
    return cropped.reshape(shape[0], block[0], shape[1], block[1], shape[2], block[2]).mean(axis=(1, 3, 5))


def block_affine(affine: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """The affine of the block-mean grid: voxels ``block`` times larger, centred on their blocks."""
    out = affine @ np.diag([*block, 1.0])
    out[:3, 3] = affine[:3, :3] @ ((np.array(block) - 1) / 2.0) + affine[:3, 3]
    return out


def volumes(templates: Path | None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, 1 mm whole-head T1, its brain mask, affine)."""
    out = []
    if templates is not None:
        img = nib.load(templates / "ch2.nii.gz")
        ref = ndimage.binary_fill_holes(np.asarray(nib.load(templates / "ch2bet.nii.gz").dataobj) > 0)
        out.append(("colin27", np.asarray(img.dataobj, dtype=np.float32), ref, np.asarray(img.affine, dtype=float)))
    phantom = make_head_phantom(1, seed=0)
    out.append(("phantom", phantom.t1, phantom.mask > 0, phantom.affine))
    demo = make_demo_subject(0, seed=0, voxel_size_mm=1.0)
    out.append(("demo01", demo.t1, demo.mask > 0, demo.affine))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=Path, default=Path("/usr/share/mricron/templates"))
    args = parser.parse_args()
    templates = args.templates if (args.templates / "ch2.nii.gz").is_file() else None
    if templates is None:
        print(f"no ch2.nii.gz in {args.templates}: Colin27 is skipped (see the docstring)", file=sys.stderr)
    rows = ["case\tvoxel_mm\tshape\tdice\tvolume_ml\treference_ml\terosion_mm\tseconds\tload_avg_1min\tnote"]
    for name, t1, ref, affine in volumes(templates):
        for block in BLOCKS:
            coarse, coarse_ref = block_mean(t1, block), block_mean(ref, block) >= 0.5
            coarse_affine = block_affine(affine, block)
            voxel = "x".join(f"{v:g}" for v in voxel_sizes(coarse_affine))
            voxel_ml = float(np.prod(voxel_sizes(coarse_affine))) / 1000.0
            start = time.perf_counter()
            try:
                found = extract_brain(coarse, coarse_affine)
            except BrainExtractionError as err:
                rows.append(f"{name}\t{voxel}\t{'x'.join(map(str, coarse.shape))}\terror\t\t"
                            f"{coarse_ref.sum() * voxel_ml:.0f}\t\t{time.perf_counter() - start:.1f}"
                            f"\t{os.getloadavg()[0]:.1f}\t{err}")
            else:
                rows.append(f"{name}\t{voxel}\t{'x'.join(map(str, coarse.shape))}\t{dice(found.mask, coarse_ref):.4f}"
                            f"\t{found.mask.sum() * voxel_ml:.0f}\t{coarse_ref.sum() * voxel_ml:.0f}"
                            f"\t{found.erosion_mm:g}\t{time.perf_counter() - start:.1f}\t{os.getloadavg()[0]:.1f}\t")
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "skullstrip_lowres.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
