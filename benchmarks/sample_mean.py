"""The mean of K diffusion samples against the run's estimate (``sr``) and the spline, on a finished run's subjects.

    .venv/bin/python benchmarks/sample_mean.py RESULTS [--split test] [--k 4] [--out benchmarks/results/sample_mean.tsv]

RESULTS is a finished run's ``results/`` folder (``make demo``, or
``benchmarks/config_e2e.sh demo DIR``). For each subject of ``--split`` the
run's LR (``results/lr/{subject}/x*.nii.gz``, already on the model's scale)
goes through the run's checkpoints with the run's own sampling settings
(``results/models/sampling.json``: sampler, steps, eta, mirrorings, seed),
except ``n_samples: K`` and ``estimate: sample_mean``, and is scored like
``results/metrics.tsv`` scores ``sr`` (``metrics.scores`` in the HR's brain
mask, data range 1). Rows: ``sample_mean_K``, its first sample ``sample``,
and the run's own ``sr`` and ``spline`` read from ``results/sr`` and
``results/baseline`` (so the rows compare on the same footing).
Issue 23 asks the mean of 4 samples to be within 0.3 dB of ``sr``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics, pipeline  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from mrisr.io import load_volume  # noqa: E402

COLUMNS = ("subject", "method", "psnr", "psnr_interior", "ssim_interior", "hfen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--k", type=int, default=4, help="samples averaged")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_mean.tsv")
    args = parser.parse_args()
    models = args.results / "models"
    settings = pipeline.read_sampling_settings(models / pipeline.SAMPLING_SETTINGS)
    options = SamplingOptions.from_mapping({**settings, "n_samples": args.k, "estimate": "sample_mean"})
    checkpoints = sorted(str(p) for p in models.glob("stage*/checkpoint.pt"))
    subjects = [s for s, part in read_splits(args.results / "splits.tsv").items() if part == args.split]
    rows = []
    for subject in subjects:
        target = load_volume(args.results / "hr" / subject / "T1w.nii.gz")[0]
        brain = load_volume(args.results / "hr" / subject / "brainmask.nii.gz")[0] > 0
        lr = load_volume(next((args.results / "lr" / subject).glob("x*.nii.gz")))[0]
        out = super_resolve(lr, checkpoints, options, device="cpu", log=lambda m: None)[-1]
        volumes = {f"sample_mean_{args.k}": out.mean, "sample": out.sample,
                   "sr": load_volume(args.results / "sr" / subject / "sr.nii.gz")[0],
                   "spline": load_volume(args.results / "baseline" / subject / "spline.nii.gz")[0]}
        for method, volume in volumes.items():
            score = metrics.scores(target, volume, brain)
            rows.append({"subject": subject, "method": method, **score})
            print("\t".join(f"{rows[-1][c]:.4f}" if isinstance(rows[-1][c], float) else str(rows[-1][c])
                            for c in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\t".join(COLUMNS) + "\n")
        for row in rows:
            fh.write("\t".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS) + "\n")


if __name__ == "__main__":
    main()
