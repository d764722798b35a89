"""What more training buys: the demo recipe trained for longer, its estimate, its samples and their spread.

For each step count, trains stage 1 of a finished run's model config (as
``recipe_steps.py`` does, on the run's stage caches; ``--recipes`` and
``--recipe`` pick a recipe of overrides) and, on the run's **validation**
subjects only, scores against the HR volume (PSNR in the brain mask and its
interior, ``metrics.scores``):

- ``spline``: the baseline;
- ``posterior_mean``: the demo's default sampling (``--sampling``'s section);
  its sd map (``sd_default``) is the one the workflow writes;
- ``ddim{S}_eta1``: single samples of a DDIM sampler with S steps and eta 1,
  ``--n-samples`` of them (each scored; the row holds their mean score), and
  ``ddim{S}_eta1_mean{N}``, the mean of those N samples;
- ``ddim{S}_eta0``: one deterministic DDIM sample;
- ``ancestral1000``: one sample of the 1,000-step ancestral sampler
  (``--ancestral``), to see whether few-step samples and the full sampler agree
  as the model improves.

The spread ratio (``benchmarks/sample_spread.py``'s definition:
sqrt(2) RMS(sd) / RMS(error of one sample), inside the brain mask; 1 is
calibrated, below 1 over-confident) is reported for the default sd map against
the error of one of the default sampler's own samples (``spread_default``) and
for the N DDIM samples (``spread``). Rows are appended to ``--out`` as each
model is scored.

    .venv/bin/python benchmarks/learning_curve.py --results results --steps 200 800 3200 \\
        --out benchmarks/results/learning_curve.tsv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mrisr import metrics  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.degrade import factor_label, upsample  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.device import pick_device  # noqa: E402
from mrisr.inference import load_stage, super_resolve_stage  # noqa: E402
from mrisr.io import load_volume  # noqa: E402
from recipe_steps import DEFAULT_RECIPES, append_row, model_config, train  # noqa: E402

COLUMNS = ("recipe", "steps", "train_seconds", "subject", "method", "evaluations", "psnr", "psnr_interior",
           "ssim_interior", "gain_interior", "spread", "seconds")


def rms(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values[mask], dtype=np.float64))))


def draw(stage, lr: np.ndarray, options: SamplingOptions, seed: int):
    start = time.perf_counter()
    out = super_resolve_stage(stage, lr, options, torch.Generator(device="cpu").manual_seed(seed))
    return out, time.perf_counter() - start


def samplers(default: SamplingOptions, args: argparse.Namespace) -> dict[str, SamplingOptions]:
    one = default.with_values(n_samples=1, estimate="sample_mean", flip_ensemble=False, data_consistency=0)
    named = {f"ddim{args.ddim_steps}_eta1": one.with_values(method="ddim", steps=args.ddim_steps, eta=1.0),
             f"ddim{args.ddim_steps}_eta0": one.with_values(method="ddim", steps=args.ddim_steps, eta=0.0),
             "default_one_sample": one}
    if args.ancestral:
        named["ancestral1000"] = one.with_values(method="ancestral", steps=1000)
    return named


def score_subject(stage, results: Path, subject: str, default: SamplingOptions, args) -> list[dict]:
    factor = stage.factor
    hr, _ = load_volume(results / "hr" / subject / "T1w.nii.gz")
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    lr, _ = load_volume(results / "lr" / subject / f"x{factor_label(factor)}.nii.gz")
    spline = metrics.scores(hr, upsample(lr, factor, int(stage.config["degrade"]["order"])), mask)
    rows = []

    def row(method: str, evaluations: int, scores: dict, seconds: float, spread: float = float("nan")) -> None:
        rows.append({"method": method, "evaluations": evaluations, **scores, "spread": spread, "seconds": seconds,
                     "gain_interior": scores["psnr_interior"] - spline["psnr_interior"]})

    row("spline", 0, spline, 0.0)
    pm, seconds = draw(stage, lr, default, default.seed)
    row("posterior_mean", default.n_samples * (default.steps_run if default.n_samples > 1 else 1),
        metrics.scores(hr, pm.mean, mask), seconds)
    named = samplers(default, args)
    one, seconds = draw(stage, lr, named["default_one_sample"], default.seed + 1)
    spread_default = np.sqrt(2) * rms(pm.sd, mask) / rms(one.mean - hr, mask) if pm.sd is not None else float("nan")
    row("default_one_sample", named["default_one_sample"].steps, metrics.scores(hr, one.mean, mask), seconds,
        spread_default)
    eta1 = f"ddim{args.ddim_steps}_eta1"
    draws = [draw(stage, lr, named[eta1], default.seed + 100 + k) for k in range(args.n_samples)]
    samples = np.stack([d[0].mean for d in draws])
    each = [metrics.scores(hr, s, mask) for s in samples]
    mean_scores = {k: float(np.mean([e[k] for e in each])) for k in each[0]}
    sd = samples.std(axis=0)
    spread = np.sqrt(2) * rms(sd, mask) / np.sqrt(np.mean([rms(s - hr, mask) ** 2 for s in samples]))
    row(eta1, args.ddim_steps, mean_scores, float(np.mean([d[1] for d in draws])), spread)
    row(f"{eta1}_mean{args.n_samples}", args.ddim_steps * args.n_samples,
        metrics.scores(hr, samples.mean(axis=0), mask), sum(d[1] for d in draws))
    for name in [n for n in named if n not in (eta1, "default_one_sample")]:
        out, seconds = draw(stage, lr, named[name], default.seed + 7)
        row(name, named[name].steps, metrics.scores(hr, out.mean, mask), seconds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, help="a JSON model config (default: the run's stage-1 checkpoint's)")
    parser.add_argument("--sampling", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--recipes", type=Path, help="recipes file (recipe_steps.py's format)")
    parser.add_argument("--recipe", default="diffusion")
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 800, 3200])
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--ancestral", action="store_true", help="also one 1,000-step ancestral sample")
    parser.add_argument("--work", type=Path, default=Path("/tmp/learning_curve"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_curve.tsv")
    args = parser.parse_args()
    config = model_config(args.results, args.config)
    recipes = json.loads(args.recipes.read_text()) if args.recipes else DEFAULT_RECIPES
    default = SamplingOptions.from_mapping(yaml.safe_load(args.sampling.read_text()).get("sampling", {}))
    val = sorted(s for s, split in read_splits(args.results / "splits.tsv").items() if split == "val")
    for steps in args.steps:
        checkpoint, train_seconds = train(args.results, config, recipes[args.recipe], steps,
                                          args.work / f"{args.recipe}_{steps}")
        stage = load_stage(checkpoint, pick_device(config.get("device", "auto")))
        for subject in val:
            for r in score_subject(stage, args.results, subject, default, args):
                append_row(args.out, COLUMNS, {
                    "recipe": args.recipe, "steps": steps, "train_seconds": f"{train_seconds:.1f}", "subject": subject,
                    **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}})


if __name__ == "__main__":
    main()
