"""Brain extraction on volumes with a known brain mask: Dice and time, mrisr's method vs brainextractor.

Real data: Colin27 (one subject, 27 averaged 1 mm T1 scans, whole head) and
its brain-extracted version, as shipped by MRIcron; on Debian/Ubuntu they come
with the package ``mricron-data`` (``apt-get install mricron-data``, or
``apt-get download mricron-data && dpkg -x mricron-data_*.deb DIR``) under
``usr/share/mricron/templates/`` (``ch2.nii.gz``, ``ch2bet.nii.gz``). The
reference mask is ``ch2bet > 0`` with its holes filled; it is itself the output
of a BET-style extraction, so it is a known mask, not a manual ground truth.

Cases: Colin27 at 1 mm; at 2 mm (2x2x2 block means; mask: mean >= 0.5); at
1 mm with a smooth bias field (+-15 %) and Rician noise (3 % of white matter)
added; and the synthetic head phantom at 2 mm (``mrisr.data.phantom``, what the
tests use). Methods: ``mrisr.data.brain_extraction.extract_brain`` (defaults,
and ``brain_fraction`` from 0.45 to 0.7 on Colin27 1 mm to show how much the
result depends on it; a run that refuses to give a mask is a row with
dice "error") and ``brainextractor`` (PyPI, a Python re-implementation
of FSL BET; defaults: f = 0.5, 1000 iterations), if installed
(``pip install -e ".[bench]"``). Everything runs single-threaded; each
brainextractor figure excludes numba's compilation (a warm-up run on the phantom).

    .venv/bin/python benchmarks/skullstrip.py [--templates /usr/share/mricron/templates]

Writes benchmarks/results/skullstrip.tsv.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr.data.brain_extraction import BrainExtractionError, ExtractionSettings, dice, extract_brain  # noqa: E402
from mrisr.data.demo import smooth_field  # noqa: E402
from mrisr.data.phantom import make_head_phantom  # noqa: E402
from mrisr.io import voxel_sizes  # noqa: E402


def block_mean(volume: np.ndarray, size: int) -> np.ndarray:
    shape = [n // size for n in volume.shape]
    cropped = volume[: shape[0] * size, : shape[1] * size, : shape[2] * size]
    return cropped.reshape(shape[0], size, shape[1], size, shape[2], size).mean(axis=(1, 3, 5))


def cases(templates: Path | None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]]:
    """(name, T1, reference mask, affine, note) for each volume with a known mask."""
    out = []
    if templates is not None:
        img = nib.load(templates / "ch2.nii.gz")
        t1 = np.asarray(img.dataobj, dtype=np.float32)
        ref = ndimage.binary_fill_holes(np.asarray(nib.load(templates / "ch2bet.nii.gz").dataobj) > 0)
        affine = np.asarray(img.affine, dtype=np.float64)
        out.append(("colin27_1mm", t1, ref, affine, "real (one subject, 27 scans averaged)"))
        affine2 = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
        affine2[:3, 3] = affine[:3, :3] @ np.full(3, 0.5) + affine[:3, 3]
        out.append(("colin27_2mm", block_mean(t1, 2), block_mean(ref.astype(np.float32), 2) >= 0.5, affine2, "real, 2x2x2 block means"))
        rng = np.random.default_rng(0)
        white = float(np.percentile(t1[ref], 95))
        biased = t1 * np.exp(0.15 * smooth_field(rng, t1.shape, control=4))
        noise = 0.03 * white
        degraded = np.sqrt((biased + noise * rng.standard_normal(t1.shape)) ** 2 + (noise * rng.standard_normal(t1.shape)) ** 2)
        out.append(("colin27_1mm_bias_noise", degraded.astype(np.float32), ref, affine, "real + bias field +-15 % + Rician noise 3 %"))
    phantom = make_head_phantom(2, seed=0)
    out.append(("phantom_2mm", phantom.t1, phantom.mask > 0, phantom.affine, "synthetic head around the MNI152 brain"))
    return out


def run_mrisr(t1: np.ndarray, affine: np.ndarray, **options) -> np.ndarray:
    return extract_brain(t1, affine, ExtractionSettings(**options)).mask


def run_brainextractor(t1: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from brainextractor import BrainExtractor

    with contextlib.redirect_stdout(io.StringIO()):  # it prints every iteration
        extractor = BrainExtractor(nib.Nifti1Image(t1.astype(np.float32), affine))
        extractor.run(iterations=1000)
        extractor.compute_mask()
    return np.asarray(extractor.mask) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=Path, default=Path("/usr/share/mricron/templates"))
    args = parser.parse_args()
    templates = args.templates if (args.templates / "ch2.nii.gz").is_file() else None
    if templates is None:
        print(f"no ch2.nii.gz in {args.templates}: only the phantom is measured (see the docstring)", file=sys.stderr)
    try:
        import brainextractor  # noqa: F401

        have_bet = True
    except ImportError:
        have_bet = False
        print("brainextractor is not installed: pip install -e '.[bench]'", file=sys.stderr)

    rows = ["case\tmethod\tvoxel_mm\tshape\tdice\tvolume_ml\treference_ml\tseconds\tload_avg_1min\tnote"]
    all_cases = cases(templates)
    if have_bet:  # compile numba's functions before anything is timed
        run_brainextractor(all_cases[-1][1], all_cases[-1][3])
    for name, t1, ref, affine, note in all_cases:
        methods = [("mrisr", lambda t, a: run_mrisr(t, a))]
        if name == "colin27_1mm":
            methods += [
                (f"mrisr brain_fraction={f}", lambda t, a, f=f: run_mrisr(t, a, brain_fraction=f))
                for f in (0.45, 0.5, 0.6, 0.65, 0.7)
            ]
        if have_bet:
            methods.append(("brainextractor", run_brainextractor))
        voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
        for method, function in methods:
            start = time.perf_counter()
            try:
                mask = function(t1, affine)
            except BrainExtractionError as err:
                rows.append(f"{name}\t{method}\t\t\terror\t\t\t{time.perf_counter() - start:.1f}\t\t{err}")
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - start
            rows.append(
                f"{name}\t{method}\t{voxel_sizes(affine)[0]:.1f}\t{'x'.join(map(str, t1.shape))}\t{dice(mask, ref):.4f}"
                f"\t{mask.sum() * voxel_ml:.0f}\t{ref.sum() * voxel_ml:.0f}\t{seconds:.1f}\t{os.getloadavg()[0]:.1f}\t{note}"
            )
            print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "skullstrip.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
