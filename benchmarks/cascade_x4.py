"""x4 as a cascade of two x2 stages against one x4 model, with and without conditioning augmentation.

Needs a run of ``config/cascade_x4.yaml`` that has made its data (the demo at
2 mm, LR at 8 mm; ``results/hr``, ``results/lr/*/x4.nii.gz``, ``splits.tsv``
and the stage caches ``results/cache/stage{1,2}/``). From the run's model
config (``--config``, JSON) it trains on the train subjects (validating on
val, as the workflow does):

- ``stage1``: 8 mm -> 4 mm, shared by both cascades (stage 0 is never augmented);
- ``stage2_plain``: 4 mm -> 2 mm, teacher-forced (its condition made from the HR);
- ``stage2_augment``: the same with ``train.cond_augment`` (``--blur``, ``--noise``);
- ``single_x4``: one model 8 mm -> 2 mm, with ``--single-channels`` base channels
  (default 22: 2.8 M parameters against the cascade's 2 x 1.5 M) and as many
  steps as the two stages together (``2 x --steps``): the same parameters and
  training budget. Its stage cache is made here from the run's HR and LR.

Each model is then applied to the LR volumes of the validation and test
subjects with the demo's sampling (``--sampling``) and scored against their HR
in the brain mask and its interior (``metrics.scores``), with the x4 spline as
the baseline. The augmentation levels are set before any score is seen (not
tuned); test subjects are scored once.

    .venv/bin/python benchmarks/cascade_x4.py --results results --config CONFIG.json \\
        --steps 400 --out benchmarks/results/cascade_x4.tsv

``--train-only NAME`` trains one of the four models into ``--work`` and stops,
so that four processes can train them side by side; a final call without it
trains what is missing and scores.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mrisr import metrics, pipeline  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.degrade import Degradation, upsample  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from mrisr.io import load_volume  # noqa: E402
from mrisr.resume import StopSignals  # noqa: E402
from mrisr.training import StageRun, TrainJob  # noqa: E402
from mrisr.training.job import run_job  # noqa: E402
from recipe_steps import append_row  # noqa: E402

COLUMNS = ("model", "split", "subject", "psnr", "psnr_interior", "ssim_interior", "hfen", "gain", "gain_interior",
           "parameters", "train_steps", "seconds")


def train(config: dict, stage: int, caches: Path, splits: Path, out: Path) -> Path:
    """Train one stage into ``out`` (kept: a second call with the same ``out`` reuses it)."""
    if (out / "checkpoint.pt").exists():
        return out / "checkpoint.pt"
    run = StageRun(config, stage, str(out / "checkpoint.pt"), str(out / "train_log.tsv"))
    job = TrainJob(run, str(splits), caches={p.name: str(p) for p in sorted(caches.iterdir())})
    with StopSignals() as stop:
        result = run_job(job, stop)
    print(f"trained {out.name}: {result.seconds:.0f} s", flush=True)
    return out / "checkpoint.pt"


def parameters(checkpoint: Path) -> int:
    return int((checkpoint.parent / "train_log.tsv").read_text().splitlines()[-1].split("\t")[5])


def single_caches(results: Path, config: dict, subjects: list[str], work: Path) -> Path:
    """Stage caches of a one-stage x4 model (factors [4]) for the train/val subjects."""
    out = work / "cache_x4"
    for s in subjects:
        if not (out / s / "cache.json").exists():
            pipeline.cache_stage(str(results / "hr" / s / "T1w.nii.gz"), str(results / "lr" / s / "x4.nii.gz"),
                                 str(results / "hr" / s / "brainmask.nii.gz"), [4], 0, str(out / s),
                                 Degradation.from_config(config["degrade"]))
    return out


def with_train(config: dict, **train: object) -> dict:
    cfg = copy.deepcopy(config)
    cfg["train"].update(train)
    return cfg


def trainings(args: argparse.Namespace, config: dict, results: Path, subjects: list[str]) -> dict[str, tuple]:
    """{name: (config, stage, caches)} of the four trainings (a function: the x4 caches are made when called)."""
    plain = with_train(config, steps=args.steps, cond_augment={"blur": 0.0, "noise": 0.0})
    augment = with_train(config, steps=args.steps, cond_augment={"blur": args.blur, "noise": args.noise})
    single = with_train(config, steps=2 * args.steps)
    single["cascade"] = {"factors": [4]}
    single["model"] = {**single["model"], "base_channels": args.single_channels}
    cache = results / "cache"
    return {"stage1": lambda: (plain, 0, cache / "stage1"), "stage2_plain": lambda: (plain, 1, cache / "stage2"),
            "stage2_augment": lambda: (augment, 1, cache / "stage2"),
            "single_x4": lambda: (single, 0, single_caches(results, config, subjects, args.work))}


def models(args: argparse.Namespace, config: dict, results: Path, subjects: list[str]) -> dict[str, tuple]:
    """{name: (checkpoints, parameters, steps)} of the three SR models, training what is not yet trained."""
    ck = {name: train(*make(), results / "splits.tsv", args.work / name)
          for name, make in trainings(args, config, results, subjects).items()}
    pair = parameters(ck["stage1"]) + parameters(ck["stage2_plain"])
    steps = 2 * args.steps
    return {"cascade_plain": ([ck["stage1"], ck["stage2_plain"]], pair, steps),
            "cascade_augment": ([ck["stage1"], ck["stage2_augment"]], pair, steps),
            "single_x4": ([ck["single_x4"]], parameters(ck["single_x4"]), steps)}


def score(results: Path, subject: str, trained: dict, sampling: SamplingOptions, order: int) -> list[dict]:
    hr, _ = load_volume(results / "hr" / subject / "T1w.nii.gz")
    mask = load_volume(results / "hr" / subject / "brainmask.nii.gz")[0] > 0
    lr, _ = load_volume(results / "lr" / subject / "x4.nii.gz")
    spline = metrics.scores(hr, upsample(lr, 4, order), mask)
    rows = [{"model": "spline", **spline, "parameters": 0, "train_steps": 0, "seconds": 0.0}]
    for name, (checkpoints, params, steps) in trained.items():
        start = time.perf_counter()
        sr = super_resolve(lr, checkpoints, sampling, log=lambda m: None)[-1].mean
        rows.append({"model": name, **metrics.scores(hr, sr, mask), "parameters": params, "train_steps": steps,
                     "seconds": time.perf_counter() - start})
    for row in rows:
        row["gain"] = row["psnr"] - spline["psnr"]
        row["gain_interior"] = row["psnr_interior"] - spline["psnr_interior"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", type=Path, required=True, help="the run's model config (JSON)")
    parser.add_argument("--sampling", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--steps", type=int, default=400, help="training steps per cascade stage")
    parser.add_argument("--blur", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--single-channels", type=int, default=22)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cascade_x4"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cascade_x4.tsv")
    parser.add_argument("--train-only", choices=("stage1", "stage2_plain", "stage2_augment", "single_x4"),
                        help="train this one model into --work and stop (to train the four in parallel)")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    sampling = SamplingOptions.from_mapping(yaml.safe_load(args.sampling.read_text()).get("sampling", {}))
    splits = read_splits(args.results / "splits.tsv")
    fit = sorted(s for s, v in splits.items() if v in ("train", "val"))
    if args.train_only:
        train(*trainings(args, config, args.results, fit)[args.train_only](), args.results / "splits.tsv",
              args.work / args.train_only)
        return
    trained = models(args, config, args.results, fit)
    for split in ("val", "test"):
        for subject in sorted(s for s, v in splits.items() if v == split):
            for r in score(args.results, subject, trained, sampling, int(config["degrade"]["order"])):
                append_row(args.out, COLUMNS, {"split": split, "subject": subject,
                                               **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()}})


if __name__ == "__main__":
    main()
