"""Whether the demo's predictor trains stably: its recipe at several learning rates and seeds, step by step.

``benchmarks/predictor_budget.py`` schedules the learning rate over wall time, so two runs of one
candidate take different steps; some of its runs stayed at the spline (``predictor_budget_reruns.tsv``).
This script trains the demo's predictor exactly as ``training.loop.TrainLoop`` does (AdamW without weight
decay, ``lr_at``'s warm-up and cosine decay over ``--steps``, gradients clipped at norm 1, an EMA of the
weights that predicts) on the demo cohort's **training** subjects, for each learning rate and seed, and
records what goes wrong when it does: the batch loss relative to the spline's on the same batch
(> 1: g is worse than the spline), the largest such ratio in the first 200 steps, and the share of the
first residual block's ReLUs that are active on a batch (a block whose ReLUs all die leaves g nearly
linear, and a linear x2 filter cannot beat the spline here: docs/benchmarks.md). At the end the EMA
weights are scored on the **validation** subjects only (demo05, demo06, and with ``--real-val`` real
ds002748 brains the package does not ship, as in ``predictor_budget.py``; test subjects are never read).

    .venv/bin/python benchmarks/predictor_stability.py --lrs 2e-3 1e-3 5e-4 --seeds 0
    .venv/bin/python tools/build_demo_cohort.py ../shared/data/ds002748 /tmp/realval --subjects 13-32
    .venv/bin/python benchmarks/predictor_stability.py --lrs 2e-3 1e-3 --seeds 1 --real-val /tmp/realval --append
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import predictor_budget  # noqa: E402
from mrisr.diffusion.predictor import ShuffleResNet, pixel_unshuffle_3d  # noqa: E402
from mrisr.training.cache import MemoryVolume  # noqa: E402
from mrisr.training.loop import ema_update, lr_at, predictor_loss  # noqa: E402
from mrisr.training.patches import PatchSampler  # noqa: E402

COLUMNS = ("lr", "seed", "steps", "seconds", "max_loss_ratio_first_200", "loss_ratio_last_100",
           "relu_active_min", "relu_active_end", "subject", "gain_interior", "gain", "ssim_interior_gain")


def relu_active(net: ShuffleResNet, cond: torch.Tensor) -> float:
    """The share of the first residual block's ReLU inputs that are positive on ``cond``."""
    with torch.no_grad():
        pre = net.body[0].conv1(net.head(pixel_unshuffle_3d(cond[:, :1], net.factor)))
    return float((pre > 0).float().mean())


def run(lr: float, seed: int, steps: int, train: list, val: dict) -> list[dict]:
    """Train the demo's predictor (config/config.yaml's predictor section) at ``lr`` from ``seed``."""
    sampler = PatchSampler([MemoryVolume(p) for p in train], 32, seed=seed, flip=True, align=2,
                           cond_names=("cond", "mask"))
    torch.manual_seed(seed)
    net = ShuffleResNet(2, 32, 2)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    ratios, active, start = [], [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 20, steps)
        cond, target = (torch.from_numpy(a) for a in sampler.batch(step, range(8)))
        with torch.no_grad():
            spline = float(predictor_loss(lambda c: c[:, :1], cond, target, "mse"))
        loss = predictor_loss(net, cond, target, "mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, min(0.99, (1.0 + step) / (10.0 + step)))
        ratios.append(float(loss.detach()) / spline)
        if step % 25 == 0 or step == steps - 1:
            active.append(relu_active(net, cond))
    seconds = time.perf_counter() - start
    common = {"lr": lr, "seed": seed, "steps": steps, "seconds": seconds,
              "max_loss_ratio_first_200": max(ratios[:200]), "loss_ratio_last_100": float(np.mean(ratios[-100:])),
              "relu_active_min": min(active), "relu_active_end": active[-1]}
    return [common | {k: r[k] for k in ("subject", "gain_interior", "gain", "ssim_interior_gain")}
            for r in predictor_budget.evaluate(ema, {"bf16": False}, val)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 1e-3, 5e-4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--real-val", type=Path, help="a cohort folder of real validation brains")
    parser.add_argument("--n-real", type=int, default=6)
    parser.add_argument("--append", action="store_true", help="add rows to --out instead of starting it anew")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predictor_stability.tsv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        train, val = predictor_budget.cohorts(args.real_val, args.n_real, Path(work))
    if not (args.append and args.out.exists()):
        args.out.write_text("\t".join(COLUMNS) + "\n")
    for seed in args.seeds:
        for lr in args.lrs:
            for row in run(lr, seed, args.steps, train, val):
                line = "\t".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS)
                print(line, flush=True)
                with open(args.out, "a") as fh:
                    fh.write(line + "\n")


if __name__ == "__main__":
    main()
