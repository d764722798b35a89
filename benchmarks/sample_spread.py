"""Are the samples as spread as their errors? Sample sd against error, by sampler and reverse variance.

For each (steps, sampling.variance) pair, draws N samples of the validation
subjects (a central crop, as sampler_quality.py) and reports inside the brain
mask:

- ``rmse_sample``: the RMS error of one sample against the HR volume, from the
  samples' mean m and population sd: mean over samples of (s - x)^2 is
  (m - x)^2 + sd^2;
- ``rms_sd``: the RMS of the per-voxel sd between samples (population);
- ``spread_ratio`` = sqrt(2) rms_sd / rmse_sample. Two draws from the true
  posterior differ by twice its variance, and a draw differs from the truth
  by the same, so calibrated samples give 1; below 1 the samples are tighter
  than their error (over-confident);
- ``sd_error_corr``: the Pearson correlation over brain voxels between the sd
  and the absolute error of the samples' mean: whether the sd map says
  *where* the errors are, which a spread that is right on average need not.

    .venv/bin/python benchmarks/sample_spread.py --results results --crop 48 \\
        --steps 10 50 --n-samples 4 --out benchmarks/results/sample_spread.tsv

Needs checkpoints written by a version that stores ``x0_mse`` (for
``variance: analytic``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from sampler_quality import load_run, load_subject  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sample_spread.tsv"))
    args = parser.parse_args()

    res = Path(args.results)
    checkpoints, config = load_run(res)
    factor = int(np.prod(config["cascade"]["factors"]))
    subjects = sorted(s for s, v in read_splits(res / "splits.tsv").items() if v == args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["subject\tsplit\tcrop\tsteps\tvariance\tn_samples\trmse_mean\trmse_sample\trms_sd\tspread_ratio\tsd_error_corr\tseconds"]
    for subject in subjects:
        hr, mask, lr = load_subject(res, subject, factor, args.crop)
        for steps in args.steps:
            for variance in ("posterior", "analytic"):
                sampling = SamplingOptions.from_mapping({
                    "method": "ddim", "steps": steps, "eta": 1.0, "patch_size": 96, "overlap": 0.25,
                    "batch_size": 1, "start_t": None, "n_samples": args.n_samples,
                    "estimate": "sample_mean", "variance": variance, "seed": args.seed})
                t0 = time.perf_counter()
                final = super_resolve(lr, checkpoints, sampling, device="auto", log=lambda m: None)[-1]
                seconds = time.perf_counter() - t0
                err2, sd2 = (final.mean - hr)[mask] ** 2, final.sd[mask] ** 2
                rmse_mean, rms_sd = float(np.sqrt(err2.mean())), float(np.sqrt(sd2.mean()))
                rmse_sample = float(np.sqrt((err2 + sd2).mean()))
                corr = float(np.corrcoef(final.sd[mask], np.sqrt(err2))[0, 1])
                rows.append(f"{subject}\t{args.split}\t{args.crop}\t{steps}\t{variance}\t{args.n_samples}\t"
                            f"{rmse_mean:.5f}\t{rmse_sample:.5f}\t{rms_sd:.5f}\t"
                            f"{np.sqrt(2) * rms_sd / rmse_sample:.3f}\t{corr:.3f}\t{seconds:.1f}")
                print(rows[-1], flush=True)
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
