"""Train one stage with config overrides on a finished run's data, for recipe comparisons.

Reuses a results directory's hr/, lr/, stage-1 caches (cache/stage1/) and splits.tsv (so the cohort is not
rebuilt), trains stage 1 with ``--set`` overrides of the run's config, and
writes a results-like directory (symlinked data + models/stage1) that
``benchmarks/sampler_quality.py --results`` can score.

    .venv/bin/python benchmarks/train_recipe.py --results results --out /tmp/exp_lr1e-3 \
        --set train.lr=0.001 --set train.steps=600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import pipeline  # noqa: E402
from mrisr.training import StageRun, TrainJob  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], help="dotted.key=yaml_value override")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = yaml.safe_load(Path(args.config).read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    res, out = Path(args.results).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("hr", "lr", "splits.tsv"):
        if not (out / name).exists():
            (out / name).symlink_to(res / name)
    subjects = [p.name for p in (res / "hr").iterdir()]
    stage_dir = out / "models" / "stage1"
    run = StageRun(config, 0, str(stage_dir / "checkpoint.pt"), str(stage_dir / "train_log.tsv"))
    caches = res / "cache" / "stage1"  # the workflow's stage caches (cache_stage); the recipe may not change them
    job = TrainJob(run, str(res / "splits.tsv"), caches={s: str(caches / s) for s in subjects if (caches / s).is_dir()})
    pipeline.train(job, str(stage_dir / "loss.png"))


if __name__ == "__main__":
    main()
