"""How well the sd map's calibration holds: each method fitted on validation subjects, checked on test subjects.

Reads a finished run (results/): the validation subjects' SR and samples' sd
that the workflow drew for the calibration (``calibration/sr/{subject}/``) and
the test subjects' (``sr/{subject}/sr.nii.gz``, ``sd_uncalibrated.nii.gz``),
with their HR and brain mask. For each calibration of
``mrisr.metrics.CALIBRATIONS`` (and ``none``, the samples' sd as drawn) it
fits on the validation subjects exactly as ``pipeline.fit_sd_calibration``
does and writes one row per subject, inside the brain mask: the fitted floor
and scale, RMS error of SR, RMS sd before and after, their ratio
RMS(sd) / RMS(error) (1 = calibrated; on the validation subjects it is 1 by
construction, so only the test rows are a check), the same ratio in the
least and the most uncertain tenth of the voxels (is the map right
everywhere, not only on average?), and the correlation of the map with the
absolute error.

    .venv/bin/python benchmarks/sd_calibration.py --results results \\
        --out benchmarks/results/sd_calibration.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.io import load_volume  # noqa: E402

HEADER = ["method", "subject", "split", "floor", "scale", "rms_error", "rms_sd_raw", "rms_sd", "ratio",
          "ratio_least_uncertain_tenth", "ratio_most_uncertain_tenth", "sd_error_corr"]


def load(results: Path, subject: str, split: str) -> tuple[np.ndarray, ...]:
    """(HR, SR, samples' sd, brain mask) of a subject, from where the workflow wrote them for its split."""
    folder = results / ("calibration/sr" if split == "val" else "sr") / subject
    hr = load_volume(results / "hr" / subject / "T1w.nii.gz")[0]
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    return hr, load_volume(folder / "sr.nii.gz")[0], load_volume(folder / "sd_uncalibrated.nii.gz")[0], mask


def row(method: str, subject: str, split: str, fitted: metrics.SdCalibration | None, volumes) -> list[str]:
    hr, sr, raw, mask = volumes
    sd = raw if fitted is None else fitted.apply(raw)
    before, after = (metrics.calibration_sums(hr, sr, s, mask) for s in (raw, sd))
    bins = metrics.error_vs_uncertainty(hr, sr, sd, mask)
    err = np.abs(np.clip(sr, 0, 1) - np.clip(hr, 0, 1))[mask]
    rms = lambda t, key: (t[key] / t["voxels"]) ** 0.5  # noqa: E731
    return [method, subject, split, f"{fitted.floor:.5f}" if fitted else "", f"{fitted.scale:.4f}" if fitted else "",
            f"{rms(before, 'sum_sq_error'):.5f}", f"{rms(before, 'sum_sq_sd'):.5f}", f"{rms(after, 'sum_sq_sd'):.5f}",
            f"{rms(after, 'sum_sq_sd') / rms(after, 'sum_sq_error'):.3f}",
            f"{bins[0]['rms_sd'] / bins[0]['rmse']:.3f}", f"{bins[-1]['rms_sd'] / bins[-1]['rmse']:.3f}",
            f"{np.corrcoef(sd[mask], err)[0, 1]:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sd_calibration.tsv"))
    args = parser.parse_args()
    results = Path(args.results)
    splits = read_splits(results / "splits.tsv")
    val = sorted(p.name for p in (results / "calibration" / "sr").iterdir() if p.is_dir())
    test = sorted(s for s, v in splits.items() if v == "test")
    if not val or any(splits.get(s) != "val" for s in val):
        raise SystemExit(f"{results}/calibration/sr: needs the validation subjects the workflow drew for the calibration")
    volumes = {s: load(results, s, "val") for s in val} | {s: load(results, s, "test") for s in test}
    sums = [metrics.calibration_sums(hr, sr, sd, mask) for hr, sr, sd, mask in (volumes[s] for s in val)]
    rows = []
    for method in ("none", *metrics.CALIBRATIONS):
        fitted = None if method == "none" else metrics.fit_sd_calibration(sums, method)
        rows += [row(method, s, "val" if s in val else "test", fitted, volumes[s]) for s in val + test]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n")
    print(out.read_text(), end="")


if __name__ == "__main__":
    main()
