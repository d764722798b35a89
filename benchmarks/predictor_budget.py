"""Predictor candidates against each other by validation gain per CPU second, on real validation brains.

Predict-and-refine's predictor g is chosen here (issue 23): each candidate
(``CANDIDATES``, or ``--only NAME ...``) is trained from scratch on the demo
cohort's **training** subjects (the default demo's split: 12 real brains of
ds002748 in synthetic heads, x2 from 4 mm to 2 mm, the acquisition protocol,
``skullstrip.normalise: brain``), and at every ``--every`` seconds of training
(wall time on this machine's threads, evaluation excluded) its whole-volume
output is scored on the **validation** subjects: the demo's own (demo05,
demo06) and real brains the package does not ship (``--real-val DIR``, a
folder that ``tools/build_demo_cohort.py`` wrote from other ds002748
subjects, wrapped in heads the same way). Test subjects are never read.

    .venv/bin/python tools/build_demo_cohort.py ../shared/data/ds002748 /tmp/realval --subjects 13-32
    .venv/bin/python benchmarks/predictor_budget.py --real-val /tmp/realval --n-real 8 --seconds 240 \
        --out benchmarks/results/predictor_budget.tsv

Every candidate's loss is the workflow predictor's (``training.loop.predictor_loss``:
inside the brain mask). Rows: candidate, seconds, steps, subject, group (demo_val / real_val), interior
and whole-mask PSNR, SSIM and HFEN of g and of the spline, and the gains.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics, pipeline  # noqa: E402
from mrisr.data.demo import demo_subject_ids, make_demo_subject  # noqa: E402
from mrisr.data.protocol import Acquisition  # noqa: E402
from mrisr.data.splits import split_subjects  # noqa: E402
from mrisr.diffusion.cascade import StagePair, stage_pair  # noqa: E402
from mrisr.diffusion.nets import unet_from_config  # noqa: E402
from mrisr.diffusion.predictor import ShuffleResNet  # noqa: E402
from mrisr.io import load_volume, save_volume  # noqa: E402
from mrisr.training.cache import MemoryVolume  # noqa: E402
from mrisr.training.loop import predictor_loss  # noqa: E402
from mrisr.training.patches import IntensityAugment, PatchSampler  # noqa: E402

COLUMNS = ("candidate", "seconds", "steps", "subject", "group", "psnr_interior", "spline_psnr_interior",
           "gain_interior", "gain", "ssim_interior_gain", "hfen_gain")

SHUFFLE = {"net": "shuffle", "channels": 32, "blocks": 4, "loss": "mse", "lr": 2e-3, "bf16": False,
           "batch": 8, "patch": 32, "clip": 1.0}
UNET = {"base_channels": 16, "channel_mult": [1, 2, 4], "num_res_blocks": 1, "attention": True, "num_heads": 4}
CANDIDATES = {
    "shuffle32x4_mse": SHUFFLE,
    "shuffle32x4_l1": SHUFFLE | {"loss": "l1"},
    "shuffle32x4_mse_lr1e-3": SHUFFLE | {"lr": 1e-3},
    "shuffle32x2_mse": SHUFFLE | {"blocks": 2},
    # the demo's predictor at higher learning rates under the same gradient clipping (VDSR-style), thinner,
    # and on half batches (twice the steps per second)
    "shuffle32x2_mse_lr4e-3": SHUFFLE | {"blocks": 2, "lr": 4e-3},
    "shuffle32x2_mse_lr8e-3": SHUFFLE | {"blocks": 2, "lr": 8e-3},
    "shuffle24x2_mse": SHUFFLE | {"blocks": 2, "channels": 24},
    "shuffle32x2_mse_b4": SHUFFLE | {"blocks": 2, "batch": 4},
    # gradients clipped near their typical norm (~0.003-0.01 here; 1.0 never acts), so that one outlier batch
    # cannot throw Adam's normalised step far (the spikes the runs above print)
    "shuffle32x2_mse_clip": SHUFFLE | {"blocks": 2, "clip": 0.01},
    "shuffle32x2_mse_lr4e-3_clip": SHUFFLE | {"blocks": 2, "lr": 4e-3, "clip": 0.01},
    # leaky ReLUs (slope 0.1) in the residual blocks: a block whose ReLUs all die leaves g linear, and a linear
    # x2 filter cannot beat the spline here (docs/benchmarks.md); a leaky one cannot die
    "shuffle32x2_mse_leaky": SHUFFLE | {"blocks": 2, "leaky": 0.1},
    "shuffle32x2_mse_lr4e-3_leaky": SHUFFLE | {"blocks": 2, "lr": 4e-3, "leaky": 0.1},
    # the demo's predictor with intensity augmentation (IntensityAugment: gain up to 1.25x, gamma up to 1.3)
    "shuffle32x2_mse_intensity": SHUFFLE | {"blocks": 2, "intensity": {"scale": 1.25, "gamma": 1.3}},
    "shuffle32x4_mse_bf16": SHUFFLE | {"bf16": True},
    "shuffle48x6_mse": SHUFFLE | {"channels": 48, "blocks": 6},
    "shuffle32x4_mse_p48": SHUFFLE | {"patch": 48, "batch": 4},
    "unet3d_regression": {"net": "unet3d", "model": UNET, "loss": "mse", "lr": 1e-3, "bf16": False, "batch": 4,
                          "patch": 32, "clip": 1.0},
    "triplanar2d_regression": {"net": "triplanar2d", "model": UNET, "loss": "mse", "lr": 1e-3, "bf16": False,
                               "batch": 4, "patch": 32, "clip": 1.0},
}


def subject_pair(t1: np.ndarray, mask: np.ndarray, affine: np.ndarray, work: Path) -> StagePair:
    """A subject's x2 stage pair made as the workflow makes it (skullstrip, make_lr, stage_pair)."""
    work.mkdir(parents=True, exist_ok=True)
    raw, raw_mask = work / "raw.nii.gz", work / "raw_mask.nii.gz"
    save_volume(raw, t1, affine)
    save_volume(raw_mask, mask, affine, dtype=np.uint8)
    hr, hr_mask, lr = work / "hr.nii.gz", work / "mask.nii.gz", work / "lr.nii.gz"
    pipeline.skullstrip(str(raw), str(hr), str(hr_mask), 4.0, 2, 99.5, str(raw_mask), Acquisition(2, normalise="brain"))
    pipeline.make_lr(str(hr), str(lr), Acquisition(2, normalise="brain"), raw_t1=str(raw))
    return stage_pair(load_volume(hr)[0], load_volume(lr)[0], load_volume(hr_mask)[0] > 0, [2], 0)


def cohorts(real_val: Path | None, n_real: int, work: Path) -> tuple[list[StagePair], dict[str, tuple[str, StagePair]]]:
    """(the demo's training pairs, {name: (group, pair)} of validation subjects)."""
    split = split_subjects(demo_subject_ids(12), 0, 0.125, 0.25)
    train, val = [], {}
    for k, (subject, part) in enumerate(split.items()):
        if part == "test":
            continue
        sub = make_demo_subject(k)
        pair = subject_pair(sub.t1, sub.mask, sub.affine, work / subject)
        if part == "train":
            train.append(pair)
        else:
            val[subject] = ("demo_val", pair)
    for k in range(n_real if real_val else 0):
        sub = make_demo_subject(k, seed=100, cohort_dir=real_val)
        val[f"real{k + 13:02d}"] = ("real_val", subject_pair(sub.t1, sub.mask, sub.affine, work / f"real{k}"))
    return train, val


class Regression(torch.nn.Module):
    """A diffusion U-Net as a plain regression of the residual over the spline: x_t = 0, t = 0."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(cond.shape[0], dtype=torch.long)
        return cond + self.unet(torch.zeros_like(cond), cond, t)


def _leaky_block(block: torch.nn.Module, x: torch.Tensor, slope: float) -> torch.Tensor:
    """A residual block of ``ShuffleResNet`` with a leaky ReLU."""
    return x + block.res_scale * block.conv2(torch.nn.functional.leaky_relu(block.conv1(x), slope))


def build(candidate: dict) -> torch.nn.Module:
    if candidate["net"] == "shuffle":
        net = ShuffleResNet(2, candidate["channels"], candidate["blocks"])
        if candidate.get("leaky"):
            for block in net.body:
                block.forward = types.MethodType(partial(_leaky_block, slope=candidate["leaky"]), block)
        return net
    return Regression(unet_from_config(candidate["model"] | {"variant": candidate["net"]}))


def evaluate(net, candidate: dict, val: dict) -> list[dict]:
    rows = []
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=candidate["bf16"]):
        for name, (group, pair) in val.items():
            pad = [(0, (-n) % 4) for n in pair.cond.shape]
            cond = torch.from_numpy(np.pad(pair.cond, pad, mode="edge"))[None, None]
            out = net(cond).float()[0, 0].numpy()[tuple(slice(0, n) for n in pair.cond.shape)]
            sr, spline = metrics.scores(pair.target, np.clip(out, 0, 1), pair.mask), \
                metrics.scores(pair.target, np.clip(pair.cond, 0, 1), pair.mask)
            rows.append({"subject": name, "group": group, "psnr_interior": sr["psnr_interior"],
                         "spline_psnr_interior": spline["psnr_interior"],
                         "gain_interior": sr["psnr_interior"] - spline["psnr_interior"],
                         "gain": sr["psnr"] - spline["psnr"],
                         "ssim_interior_gain": sr["ssim_interior"] - spline["ssim_interior"],
                         "hfen_gain": spline["hfen"] - sr["hfen"]})
    net.train()
    return rows


def train_candidate(name: str, candidate: dict, train: list, val: dict, seconds: float, every: float, out: Path):
    torch.manual_seed(0)
    net = build(candidate)
    optimiser = torch.optim.Adam(net.parameters(), lr=candidate["lr"])
    # the brain mask rides as the last condition channel, weighting the loss as the workflow's predictor's does
    sampler = PatchSampler([MemoryVolume(p) for p in train], candidate["patch"], seed=0, flip=True,
                           align=2 if candidate["net"] == "shuffle" else 1, cond_names=("cond", "mask"),
                           intensity=IntensityAugment.from_mapping(candidate.get("intensity")))
    elapsed, step, next_eval, norms = 0.0, 0, every, []
    while elapsed < seconds:
        start = time.perf_counter()
        progress = elapsed / seconds
        for group in optimiser.param_groups:  # warm-up, then cosine decay to 10 % over the time budget
            group["lr"] = candidate["lr"] * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        cond, target = (torch.from_numpy(a) for a in sampler.batch(step, range(candidate["batch"])))
        with torch.autocast("cpu", torch.bfloat16, enabled=candidate["bf16"]):
            loss = predictor_loss(net, cond, target, candidate["loss"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), candidate["clip"]).detach())
        optimiser.step()
        norms.append(norm)
        if step >= 50 and norm > 20 * float(np.median(norms[-50:])):  # a gradient spike: say so
            print(f"# {name}: step {step}, gradient norm {norm:.3g} (median of the last 50: "
                  f"{np.median(norms[-50:]):.3g}), loss {float(loss):.4g}", flush=True)
        step += 1
        elapsed += time.perf_counter() - start
        if elapsed >= next_eval or elapsed >= seconds:
            next_eval += every
            for row in evaluate(net, candidate, val):
                append(out, {"candidate": name, "seconds": f"{elapsed:.1f}", "steps": step, **row})


def append(out: Path, row: dict) -> None:
    if not out.exists():
        out.write_text("\t".join(COLUMNS) + "\n")
    line = "\t".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS)
    print(line, flush=True)
    with open(out, "a") as fh:
        fh.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-val", type=Path, help="a cohort folder of real validation brains")
    parser.add_argument("--n-real", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--every", type=float, default=60)
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predictor_budget.tsv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        train, val = cohorts(args.real_val, args.n_real, Path(work))
        print(f"# {len(train)} train, {len(val)} val subjects made in {time.perf_counter() - start:.0f} s", flush=True)
        for name in args.only or CANDIDATES:
            train_candidate(name, copy.deepcopy(CANDIDATES[name]), train, val, args.seconds, args.every, args.out)


if __name__ == "__main__":
    main()
