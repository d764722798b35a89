"""Training recipes against each other as training lengthens, scored on validation subjects only.

For each recipe (by default ``diffusion`` and ``regression``: the objective;
``--recipes FILE.json`` names others, each a set of config overrides) and
each step count this trains stage 1 of a finished run's model config (its
checkpoint's config, ``train.steps`` and the recipe's keys overridden) on the run's stage caches
(``results/cache/stage1/``), then super-resolves the run's **validation**
subjects with the demo config's sampling (``--sampling``: a config file, or a run's
``results/models/sampling.json``) and scores them against their HR: PSNR
and SSIM in the brain mask and in its interior, HFEN, and the gains over the
spline baseline (``metrics.scores``). ``--estimates`` scores each model with
these point estimates instead, one sample each (``sr_posterior_mean``,
``sr_sample``: one diffusion sample, ``sr_predictor``: a predict-and-refine
stage's predictor alone), the sampling otherwise as given. Scale factors may
differ by axis (``cascade.factors: [[1, 1, 4]]``); a predict-and-refine model
(``diffusion.target: predictor_residual``) trains on the predictor outputs in
the caches and carries the run's ``results/models/stage1/predictor.pt``. Test
subjects are never read. Rows are appended to ``--out`` as each model is
scored, so a run stopped at a time limit keeps what it measured.

    .venv/bin/python benchmarks/recipe_steps.py --results results --steps 200 1000 \
        --out benchmarks/results/recipe_steps.tsv

A recipes file maps names to overrides, section by section, e.g.
``{"t_end_half": {"train": {"t_end_fraction": 0.5}}, "lr2e-3": {"train": {"lr": 0.002}}}``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.degrade import factor_label, upsample  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.diffusion.cascade import total_factor  # noqa: E402
from mrisr.diffusion.parameterization import Parameterization  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from mrisr.io import load_volume  # noqa: E402
from mrisr.resume import StopSignals  # noqa: E402
from mrisr.training import StageRun, TrainJob  # noqa: E402
from mrisr.training.job import run_job  # noqa: E402

COLUMNS = ("recipe", "steps", "train_seconds", "subject", "method", *metrics.SCORES, "gain", "gain_interior")


# --estimates: method name -> the sampling estimate it scores, with one sample
ESTIMATES = {"posterior_mean": "posterior_mean", "sample": "sample_mean", "predictor": "predictor"}

DEFAULT_RECIPES = {"diffusion": {"train": {"objective": "diffusion"}},
                   "regression": {"train": {"objective": "regression"}}}


def append_row(out: Path, columns: tuple[str, ...], values: dict) -> None:
    """Print one result row and append it to ``out`` (with a header when new), so a stopped run keeps it."""
    if not out.exists():
        out.write_text("\t".join(columns) + "\n")
    line = "\t".join(str(values[c]) for c in columns)
    print(line, flush=True)
    with open(out, "a") as fh:
        fh.write(line + "\n")


def model_config(results: Path, config: Path | None) -> dict:
    """A JSON model config, or the run's stage-1 checkpoint's."""
    if config:
        return json.loads(config.read_text())
    import torch

    return torch.load(results / "models" / "stage1" / "checkpoint.pt", weights_only=True)["config"]


def train(results: Path, config: dict, recipe: dict, steps: int, out: Path) -> tuple[Path, float]:
    cfg = copy.deepcopy(config)
    for section, values in recipe.items():
        cfg.setdefault(section, {}).update(values)
    cfg["train"].update(steps=steps, val_every=max(1, steps // 4))
    cfg["device"] = "auto"
    caches = results / "cache" / "stage1"
    predictor = None  # predict-and-refine: the caches hold the run's predictor's output, the checkpoint carries it
    if Parameterization.from_diffusion(cfg["diffusion"]).target == "predictor_residual":
        predictor = str(results / "models" / "stage1" / "predictor.pt")
    run = StageRun(cfg, 0, str(out / "checkpoint.pt"), str(out / "train_log.tsv"), predictor=predictor)
    job = TrainJob(run, str(results / "splits.tsv"), caches={p.name: str(p) for p in caches.iterdir()})
    with StopSignals() as stop:
        result = run_job(job, stop)
    return out / "checkpoint.pt", result.seconds


def score(results: Path, checkpoint: Path, config: dict, sampling: SamplingOptions, subject: str,
          estimates: list[str] | None = None) -> list[dict]:
    """The spline's and the model's scores on ``subject``: ``sr`` with ``sampling``, or with each of ``estimates``
    (``ESTIMATES``) and one sample, as ``sr_{name}``."""
    factor = total_factor(config["cascade"]["factors"])
    hr, _ = load_volume(results / "hr" / subject / "T1w.nii.gz")
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    lr, _ = load_volume(results / "lr" / subject / f"x{factor_label(factor)}.nii.gz")
    runs = {"sr": sampling} if not estimates else {
        f"sr_{name}": dataclasses.replace(sampling, estimate=ESTIMATES[name], n_samples=1) for name in estimates}
    volumes = {"spline": np.clip(upsample(lr, factor, int(config["degrade"]["order"])), 0.0, 1.0)}  # as the run's
    for name, options in runs.items():
        volumes[name] = super_resolve(lr, [checkpoint], options, log=lambda m: None)[-1].mean
    rows = {name: metrics.scores(hr, volume, mask) for name, volume in volumes.items()}
    for row in rows.values():
        row["gain"] = row["psnr"] - rows["spline"]["psnr"]
        row["gain_interior"] = row["psnr_interior"] - rows["spline"]["psnr_interior"]
    return [{"method": name, **row} for name, row in rows.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, help="a JSON model config (default: the run's stage-1 checkpoint's)")
    parser.add_argument("--sampling", type=Path, default=ROOT / "config" / "config.yaml",
                        help="the config file whose sampling section scores the models, or a run's "
                        "models/sampling.json (default: the demo config)")
    parser.add_argument("--estimates", nargs="+", choices=list(ESTIMATES),
                        help="score these estimates, one sample each, instead of the sampling's own")
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--recipes", type=Path, help="a JSON file: recipe name -> config overrides (default: "
                        "the diffusion and regression objectives)")
    parser.add_argument("--only", nargs="+", help="run only these recipes of the file")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe_steps"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipe_steps.tsv")
    args = parser.parse_args()
    config = model_config(args.results, args.config)
    sampling = SamplingOptions.from_mapping(yaml.safe_load(args.sampling.read_text()).get("sampling", {}))
    val = sorted(s for s, split in read_splits(args.results / "splits.tsv").items() if split == "val")
    recipes = json.loads(args.recipes.read_text()) if args.recipes else DEFAULT_RECIPES
    names = args.only or list(recipes)
    for steps in args.steps:
        for name in names:
            checkpoint, seconds = train(args.results, config, recipes[name], steps, args.work / f"{name}_{steps}")
            for subject in val:
                for row in score(args.results, checkpoint, config, sampling, subject, args.estimates):
                    append_row(args.out, COLUMNS, {
                        "recipe": name, "steps": steps, "train_seconds": f"{seconds:.1f}", "subject": subject,
                        **{k: f"{v:.4f}" for k, v in row.items() if k != "method"}, "method": row["method"]})


if __name__ == "__main__":
    main()
