"""How well the sd map's calibration holds: the scale fitted on validation subjects, checked on test subjects.

Reads a finished run's ``calibration/sd_scale.json`` (``pipeline.fit_sd_scale``)
and its test subjects' ``metrics/{subject}_calibration.tsv`` (the calibrated
map's sd bins, ``metrics.error_vs_uncertainty``), and writes one row per
subject, inside the brain mask: RMS error of SR, RMS sd before and after the
scale, their ratio RMS(sd) / RMS(error) (1 = calibrated; on the validation
subjects it is 1 by construction, so only the test rows are a check), and,
from the bins, the ratio in the least and the most uncertain tenth of the
voxels (whether one scale is right everywhere, not only on average).

    .venv/bin/python benchmarks/sd_calibration.py --results results \\
        --out benchmarks/results/sd_calibration.tsv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["subject", "split", "rms_error", "rms_sd_raw", "rms_sd", "ratio_raw", "ratio",
          "ratio_least_uncertain_tenth", "ratio_most_uncertain_tenth"]


def test_rows(results: Path, scale: float) -> list[list[str]]:
    rows = []
    for path in sorted((results / "metrics").glob("*_calibration.tsv")):
        with open(path, newline="") as fh:
            bins = list(csv.DictReader(fh, delimiter="\t"))
        # bins hold equal voxel counts: the RMS over voxels is the RMS of the bins' RMS values
        error = math.sqrt(sum(float(b["rmse"]) ** 2 for b in bins) / len(bins))
        sd = math.sqrt(sum(float(b["sd"]) ** 2 for b in bins) / len(bins))
        rows.append([bins[0]["subject"], "test", f"{error:.5f}", f"{sd / scale:.5f}", f"{sd:.5f}",
                     f"{sd / scale / error:.3f}", f"{sd / error:.3f}",
                     f"{float(bins[0]['sd']) / float(bins[0]['rmse']):.3f}",
                     f"{float(bins[-1]['sd']) / float(bins[-1]['rmse']):.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sd_calibration.tsv"))
    args = parser.parse_args()
    results = Path(args.results)
    fitted = json.loads((results / "calibration" / "sd_scale.json").read_text())
    scale = fitted["scale"]
    rows = [[subject, "val", f"{v['rms_error']:.5f}", f"{v['rms_sd']:.5f}", f"{v['rms_sd'] * scale:.5f}",
             f"{v['rms_sd'] / v['rms_error']:.3f}", f"{v['rms_sd'] * scale / v['rms_error']:.3f}", "", ""]
            for subject, v in sorted(fitted["subjects"].items())]
    rows += test_rows(results, scale)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n")
    print(f"scale {scale:.4f}\n" + out.read_text(), end="")


if __name__ == "__main__":
    main()
