"""Where in the diffusion a stage checkpoint has learnt: its x0 error at fixed timesteps.

For each checkpoint, the mean squared error of the x0 prediction (in units of
the unscaled residual, HR minus spline) on fixed validation patches at
t = 0, 100, ..., 999, next to the error of predicting a zero residual (the
spline itself). At t = T - 1 the prediction is E[x0 | LR], the
posterior-mean estimate that sampling.estimate: posterior_mean reports, so
that column says how much a model can beat the spline in PSNR at all.

    .venv/bin/python benchmarks/loss_by_t.py --results results --label demo300 \
        results/models/stage1/checkpoint.pt

Appends to benchmarks/results/loss_by_t.tsv (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.diffusion.parameterization import Parameterization  # noqa: E402
from mrisr.diffusion.cascade import stage_pair  # noqa: E402
from mrisr.diffusion.schedule import make_schedule, q_sample  # noqa: E402
from mrisr.inference import load_stage  # noqa: E402
from mrisr.io import load_volume  # noqa: E402
from mrisr.training import MemoryVolume, PatchSampler  # noqa: E402

TIMESTEPS = (0, 100, 300, 500, 700, 900, 999)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--results", default="results", help="a finished run: hr/, lr/, splits.tsv")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--label", default="")
    parser.add_argument("--patches", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_by_t.tsv"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    res = Path(args.results)
    subjects = sorted(s for s, v in read_splits(res / "splits.tsv").items() if v == args.split)
    out = Path(args.out)
    if not out.exists():
        out.write_text("label\tcheckpoint\tsplit\tt\tx0_mse\tspline_mse\n")
    for path in args.checkpoints:
        stage = load_stage(path, torch.device("cpu"))
        cfg = stage.config
        d, factors = cfg["diffusion"], cfg["cascade"]["factors"]
        factor = int(np.prod(factors))
        pairs = []
        for s in subjects:
            hr, _ = load_volume(res / "hr" / s / "T1w.nii.gz")
            lr, _ = load_volume(res / "lr" / s / f"x{factor}.nii.gz")
            mask = load_volume(res / "hr" / s / "brainmask.nii.gz")[0] > 0
            pairs.append(stage_pair(hr, lr, mask, factors, stage.stage, int(cfg["degrade"]["order"]), False))
        cond, target = (torch.from_numpy(a) for a in
                        PatchSampler([MemoryVolume(p) for p in pairs], int(cfg["train"]["patch_size"]), 5)
                        .batch(0, range(args.patches)))
        param = Parameterization.from_diffusion(d)
        scale = param.residual_scale
        schedule = make_schedule(d["schedule"], int(d["num_timesteps"]), float(d["noise_var"]))
        spline_mse = float(((target - cond) ** 2).mean())
        with open(out, "a") as fh:
            for t in TIMESTEPS:
                noise = torch.randn(cond.shape, generator=torch.Generator().manual_seed(t))
                tt = torch.full((len(cond),), t)
                x0 = param.to_diffusion_space(target, cond)
                xt = q_sample(schedule, x0, tt, noise)
                with torch.no_grad():
                    raw = stage.model(xt, cond, tt)
                x0_hat = param.output_to_x0(schedule, xt, tt, raw)
                mse = float(((x0_hat - x0) ** 2).mean()) / scale ** 2
                row = f"{args.label}\t{path}\t{args.split}\t{t}\t{mse:.6g}\t{spline_mse:.6g}"
                fh.write(row + "\n")
                print(row, flush=True)


if __name__ == "__main__":
    main()
