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
the run's own ``sr`` (``results/sr``, or ``results/calibration`` for a
validation subject) and the spline (the baseline rule's: the LR upsampled
with ``degrade.order``, clipped to [0, 1]).
Issue 23 asks the mean of 4 samples to be within 0.3 dB of ``sr``.

``--set KEY=VALUE`` overrides further sampling settings (YAML values), e.g.
``--split val --set flip_ensemble=false`` to see on validation subjects what
drawing the samples on mirrored volumes does; the ``sr`` row is then the run's
own, as always.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics, pipeline  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.data.degrade import upsample  # noqa: E402
from mrisr.device import pick_device  # noqa: E402
from mrisr.diffusion.cascade import total_factor  # noqa: E402
from mrisr.inference import load_cascade, super_resolve  # noqa: E402
from mrisr.io import load_volume, write_tsv  # noqa: E402

COLUMNS = ("subject", "method", "psnr", "psnr_interior", "ssim_interior", "hfen")


def run_sr(results: Path, subject: str) -> Path:
    """The run's ``sr``: a test subject's in ``sr/``, a calibration (validation) subject's in ``calibration/sr/``."""
    for folder in ("sr", "calibration/sr"):
        if (results / folder / subject / "sr.nii.gz").exists():
            return results / folder / subject / "sr.nii.gz"
    raise SystemExit(f"{results}: no sr.nii.gz of {subject} (only test and calibration subjects have one)")


def cells(row: dict) -> list[str]:
    """A table row's cells, floats to 4 decimals."""
    return [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--k", type=int, default=4, help="samples averaged")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="further sampling overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_mean.tsv")
    args = parser.parse_args()
    models = args.results / "models"
    settings = pipeline.read_sampling_settings(models / pipeline.SAMPLING_SETTINGS)
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    options = SamplingOptions.from_mapping({**settings, **overrides, "n_samples": args.k, "estimate": "sample_mean"})
    checkpoints = sorted(str(p) for p in models.glob("stage*/checkpoint.pt"))
    subjects = [s for s, part in read_splits(args.results / "splits.tsv").items() if part == args.split]
    config = load_cascade(checkpoints[:1], pick_device("cpu"))[0].config
    factor, order = total_factor(config["cascade"]["factors"]), int(config["degrade"]["order"])
    rows = []
    for subject in subjects:
        target = load_volume(args.results / "hr" / subject / "T1w.nii.gz")[0]
        brain = load_volume(args.results / "hr" / subject / "brainmask.nii.gz")[0] > 0
        lr = load_volume(next((args.results / "lr" / subject).glob("x*.nii.gz")))[0]
        out = super_resolve(lr, checkpoints, options, device="cpu", log=lambda m: None)[-1]
        volumes = {f"sample_mean_{args.k}": out.mean, "sample": out.sample,
                   "sr": load_volume(run_sr(args.results, subject))[0], "spline": np.clip(upsample(lr, factor, order), 0, 1)}
        for method, volume in volumes.items():
            score = metrics.scores(target, volume, brain)
            rows.append({"subject": subject, "method": method, **score})
            print("\t".join(cells(rows[-1])), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out, COLUMNS, [cells(row) for row in rows])


if __name__ == "__main__":
    main()
