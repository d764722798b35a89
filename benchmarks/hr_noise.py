"""How much of an SR error is the HR volume's own noise, which no model can predict (the demo only).

The demo generator can make each subject without its Rician noise
(``make_demo_subject(..., noise=False)``, every other draw identical). This
script rebuilds that noise-free volume for the validation and test subjects of
a finished demo run, puts it through the run's own HR crop and intensity scale
(read back from the HR file: its box from the affines, its scale from the
voxel-wise ratio), and reports for the spline and the SR estimate, in the
brain mask and its interior (``metrics.interior``), the RMS error against the
HR the metrics use (noisy) and against the noise-free HR, and the RMS of the
HR's noise itself. For the SR's sd map, its RMS beside them. The noise's share
of the squared error is what no estimate can remove; the noise-free PSNR is
what the same estimate would score against the true anatomy.

    .venv/bin/python benchmarks/hr_noise.py --results results --out benchmarks/results/hr_noise.tsv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics  # noqa: E402
from mrisr.data.demo import demo_subject_index, make_demo_subject  # noqa: E402
from mrisr.data.protocol import box_start, crop_normalised  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.io import crop_or_pad, load_volume, write_tsv  # noqa: E402

COLUMNS = ("subject", "split", "region", "method", "rmse_vs_hr", "rmse_vs_noise_free", "hr_noise_rms",
           "noise_share_of_mse", "psnr_vs_hr", "psnr_vs_noise_free", "sd_rms")


def noise_free_hr(results: Path, subject: str, demo: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HR as the run wrote it, the same HR without the noise, brain mask), on the HR grid."""
    hr, hr_affine = load_volume(results / "hr" / subject / "T1w.nii.gz")
    raw, raw_affine = load_volume(results / "raw" / subject / "T1w.nii.gz")
    args = (demo_subject_index(subject), int(demo["seed"]), float(demo["voxel_size_mm"]))
    if not np.allclose(make_demo_subject(*args).t1, raw, rtol=1e-5, atol=1e-3):
        raise ValueError(f"{subject}: the run's raw volume is not demo subject {args} (another demo config?)")
    start = box_start(raw_affine, hr_affine)
    crop = crop_or_pad(raw, raw_affine, tuple(start), tuple(hr.shape))[0]  # the HR box, unscaled
    inside = (hr > 0.05) & (hr < 0.95)
    scale = float(np.median(crop[inside] / hr[inside]))
    clean, _ = crop_normalised(make_demo_subject(*args, noise=False).t1, raw_affine, start, hr.shape, scale)
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    return hr, clean, mask


def rows_for(subject: str, split: str, hr: np.ndarray, clean: np.ndarray, mask: np.ndarray,
             methods: dict[str, np.ndarray], sd: np.ndarray | None) -> list[list]:
    rms = lambda x, m: float(np.sqrt(np.mean(np.square(x[m], dtype=np.float64))))  # noqa: E731
    psnr = lambda e: 20 * np.log10(metrics.DATA_RANGE / e)  # noqa: E731
    out = []
    for region, m in (("mask", mask), ("interior", metrics.interior(mask))):
        noise = rms(hr - clean, m)
        for method, volume in methods.items():
            e_hr, e_clean = rms(volume - hr, m), rms(volume - clean, m)
            sd_rms = rms(sd, m) if sd is not None and method == "sr" else float("nan")
            out.append([subject, split, region, method, f"{e_hr:.5f}", f"{e_clean:.5f}", f"{noise:.5f}",
                        f"{noise ** 2 / e_hr ** 2:.3f}", f"{psnr(e_hr):.3f}", f"{psnr(e_clean):.3f}", f"{sd_rms:.5f}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml", help="the run's config")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hr_noise.tsv")
    args = parser.parse_args()
    demo = yaml.safe_load(args.config.read_text())["demo"]
    rows = []
    for subject, split in sorted(read_splits(args.results / "splits.tsv").items()):
        sr_path = args.results / "sr" / subject / "sr.nii.gz"
        if split == "train" or not sr_path.exists():
            continue
        hr, clean, mask = noise_free_hr(args.results, subject, demo)
        methods = {"spline": load_volume(args.results / "baseline" / subject / "spline.nii.gz")[0],
                   "sr": load_volume(sr_path)[0]}
        sd_path = args.results / "sr" / subject / "sd.nii.gz"
        sd = load_volume(sd_path)[0] if sd_path.exists() else None
        rows += rows_for(subject, split, hr, clean, mask, methods, sd)
        print("\n".join("\t".join(map(str, r)) for r in rows[-4:]), flush=True)
    write_tsv(args.out, COLUMNS, rows)


if __name__ == "__main__":
    main()
