"""PSNR/SSIM of sampler variants against the spline baseline, on a finished run's test subjects.

Reads a results directory written by the workflow (hr/, lr/, splits.tsv and
the stage checkpoints), super-resolves every test subject with each sampler
variant, and appends one row per (variant, subject) to the output TSV:
PSNR and SSIM in the brain mask, their gain over spline, network evaluations
(NFE), wall seconds, and PSNR in the mask's interior (``metrics.interior``: eroded
by 2 voxels) with its gain over spline.

    .venv/bin/python benchmarks/sampler_quality.py --results results \
        --variants ddim10 regression trunc300_5 --out benchmarks/results/sampler_quality.tsv

Variants are named in VARIANTS below; ``--crop N`` scores a central N^3 HR
crop (with its LR counterpart) so that 1000-step ancestral sampling is
affordable on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics  # noqa: E402
from mrisr.data.degrade import upsample  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from mrisr.io import load_volume  # noqa: E402

BASE = {"method": "ddim", "steps": 10, "eta": 0.0, "patch_size": 96, "overlap": 0.25, "batch_size": 1,
        "start_t": None, "n_samples": 1, "data_consistency": 0, "estimate": "sample_mean"}
VARIANTS = {
    "ddim10": {},
    "ddim20": {"steps": 20},
    "ddim50": {"steps": 50},
    "regression": {"steps": 1},  # one x0 prediction from pure noise: E[x0 | cond]
    "ddim10_eta1_n4": {"eta": 1.0, "n_samples": 4},
    "ddim10_n4": {"n_samples": 4},
    "trunc300_5": {"start_t": 300, "steps": 5},
    "trunc100_3": {"start_t": 100, "steps": 3},
    "trunc300_5_n4": {"start_t": 300, "steps": 5, "n_samples": 4, "eta": 1.0},
    "trunc300_5_dc3": {"start_t": 300, "steps": 5, "data_consistency": 3},
    "ancestral1000": {"method": "ancestral", "steps": 1000},
    "ancestral50": {"method": "ancestral", "steps": 50},
    # single posterior samples with few steps (eta = 1: the posterior's noise at every step)
    "ddim50_eta1": {"steps": 50, "eta": 1.0},
    "ddim20_eta1": {"steps": 20, "eta": 1.0},
    "ddim10_eta1": {"steps": 10, "eta": 1.0},
    # the same with the analytic variance (Analytic-DPM): needs a checkpoint with x0_mse
    "ddim50_eta1_av": {"steps": 50, "eta": 1.0, "variance": "analytic"},
    "ddim20_eta1_av": {"steps": 20, "eta": 1.0, "variance": "analytic"},
    "ddim10_eta1_av": {"steps": 10, "eta": 1.0, "variance": "analytic"},
    "ancestral50_av": {"method": "ancestral", "steps": 50, "variance": "analytic"},
    "ancestral1000_av": {"method": "ancestral", "steps": 1000, "variance": "analytic"},
    # the demo's sampling: posterior mean over 4 mirrorings, 4 samples for the sd map
    "demo": {"estimate": "posterior_mean", "steps": 5, "eta": 1.0, "n_samples": 4, "flip_ensemble": True},
    # the posterior-mean estimate E[x0 | LR]: the x0 prediction from pure noise
    "pm1": {"estimate": "posterior_mean", "steps": 1},
    "pm8flip": {"estimate": "posterior_mean", "steps": 1, "n_samples": 8, "flip_ensemble": True},
    "pm8flip_dc3": {"estimate": "posterior_mean", "steps": 1, "n_samples": 8, "flip_ensemble": True,
                    "data_consistency": 3},
    "ddim10_eta1_n8flip": {"eta": 1.0, "n_samples": 8, "flip_ensemble": True},
    "pm_ddim10_eta1_n8flip": {"estimate": "posterior_mean", "eta": 1.0, "n_samples": 8, "flip_ensemble": True},
    # truncated single posterior samples (eta = 1): start at t = T0 from q(x_T0 | x0 = condition), K DDIM
    # steps down to 0 (K network evaluations); _n4: the mean of 4 such samples
    **{f"trunc{t0}_{k}_eta1": {"start_t": t0, "steps": k, "eta": 1.0} for t0 in (50, 100, 200, 400) for k in (2, 5)},
    **{f"trunc{t0}_{k}_eta1_n4": {"start_t": t0, "steps": k, "eta": 1.0, "n_samples": 4}
       for t0 in (50, 100, 200, 400) for k in (2, 5)},
}


def central_crop(volume: np.ndarray, side: int, factor: int) -> tuple[slice, ...]:
    side = side - side % factor
    return tuple(slice((s - min(side, s)) // 2 // factor * factor, (s - min(side, s)) // 2 // factor * factor + min(side, s)) for s in volume.shape)


def load_run(results: Path) -> tuple[list[str], dict]:
    """A finished run's stage checkpoints (coarse to fine) and the config stored in the first."""
    checkpoints = [str(c) for c in sorted((results / "models").glob("stage*/checkpoint.pt"))]
    if not checkpoints:
        raise SystemExit(f"{results}/models: no stage checkpoints")
    import torch

    return checkpoints, torch.load(checkpoints[0], weights_only=True)["config"]


def load_subject(results: Path, subject: str, factor: int, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HR, brain mask, LR) of a subject of the run, cut to the central ``crop``^3 HR box (0: whole)."""
    hr, _ = load_volume(results / "hr" / subject / "T1w.nii.gz")
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    lr, _ = load_volume(results / "lr" / subject / f"x{factor}.nii.gz")
    if crop:
        box = central_crop(hr, crop, factor)
        hr, mask = hr[box], mask[box]
        lr = lr[tuple(slice(b.start // factor, b.stop // factor) for b in box)]
    return hr, mask, lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--variants", nargs="+", default=["ddim10", "regression", "trunc300_5"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_quality.tsv"))
    parser.add_argument("--crop", type=int, default=0, help="score a central crop of this HR side (0 = whole volume)")
    parser.add_argument("--label", default="", help="free text stored with each row (e.g. the training recipe)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="sampling seeds; each variant is run once per seed (a row each)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="subjects scored; compare recipes on val, report test once chosen")
    args = parser.parse_args()

    res = Path(args.results)
    checkpoints, config = load_run(res)
    factor = int(np.prod(config["cascade"]["factors"]))
    order = int(config["degrade"]["order"])
    subjects = sorted(s for s, v in read_splits(res / "splits.tsv").items() if v == args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "label\tvariant\tsplit\tsubject\tcrop\tseed\tpsnr\tssim\tspline_psnr\tspline_ssim\tgain_db\tnfe\tseconds\tpsnr_interior\tspline_psnr_interior\tgain_interior_db\n"
    if not out.exists():
        out.write_text(header)
    elif out.open().readline() != header:
        raise SystemExit(f"{out}: written with other columns; give a new --out")
    for subject in subjects:
        hr, mask, lr = load_subject(res, subject, factor, args.crop)
        spline = np.clip(upsample(lr, factor, order), 0, 1)
        sp_psnr, sp_ssim = metrics.psnr_in_mask(hr, spline, mask), metrics.ssim_in_mask(hr, spline, mask)
        inner = metrics.interior(mask)
        sp_psnr_in = metrics.psnr_in_mask(hr, spline, inner)
        for name, seed in ((n, s) for n in args.variants for s in args.seeds):
            sampling = SamplingOptions.from_mapping({**BASE, **VARIANTS[name], "seed": seed})
            t0 = time.perf_counter()
            outputs = super_resolve(lr, checkpoints, sampling, device="auto", log=lambda m: None)
            seconds = time.perf_counter() - t0
            sr = outputs[-1].mean
            psnr, ssim = metrics.psnr_in_mask(hr, sr, mask), metrics.ssim_in_mask(hr, sr, mask)
            psnr_in = metrics.psnr_in_mask(hr, sr, inner)
            steps = min(sampling.steps_run, sampling.start_t or sampling.steps_run)
            nfe = steps * sampling.n_samples * len(checkpoints)
            row = (f"{args.label}\t{name}\t{args.split}\t{subject}\t{args.crop}\t{seed}\t{psnr:.3f}\t{ssim:.4f}\t{sp_psnr:.3f}\t"
                   f"{sp_ssim:.4f}\t{psnr - sp_psnr:+.3f}\t{nfe}\t{seconds:.1f}\t"
                   f"{psnr_in:.3f}\t{sp_psnr_in:.3f}\t{psnr_in - sp_psnr_in:+.3f}")
            with open(out, "a") as fh:
                fh.write(row + "\n")
            print(row, flush=True)


if __name__ == "__main__":
    main()
