"""Both networks of a predict-and-refine stage trained on in-memory pairs (tests, benchmarks, notebooks).

The workflow splits the same work into jobs (``train_predictor``, ``predict``,
``train_stage``, with the stage caches on disk between them); this runs it
in one process: the predictor g on the pairs, g's output over every pair
(as the predict rule writes it), then the diffusion model on the residual
over g, whose checkpoint carries g.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from mrisr.diffusion.cascade import StagePair
from mrisr.diffusion.predictor import predictor_flips, predictor_from_payload, predictor_output
from mrisr.training.loop import StageRun, train_stage


def with_predictions(pairs: Sequence[StagePair], predictor_path: str | Path) -> list[StagePair]:
    """The pairs with the trained predictor's output (averaged over its mirrorings) as their ``pred``."""
    payload = torch.load(predictor_path, map_location="cpu", weights_only=True)
    model, flips = predictor_from_payload(payload), predictor_flips(payload["config"])
    return [replace(p, pred=predictor_output(model, p.cond, flips)) for p in pairs]


def train_predict_and_refine(
    train: Sequence[StagePair], val: Sequence[StagePair], config: dict, stage: int, out_dir: str | Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Train stage ``stage``'s predictor, then its diffusion model on the residual; returns the stage checkpoint
    (``out_dir/checkpoint.pt``, which carries the predictor; ``predictor.pt`` and the loss logs beside it)."""
    out = Path(out_dir)
    predictor = out / "predictor.pt"
    train_stage(train, val, StageRun(config, stage, str(predictor), str(out / "predictor_log.tsv"),
                                     network="predictor"), log=log)
    checkpoint = out / "checkpoint.pt"
    run = StageRun(config, stage, str(checkpoint), str(out / "train_log.tsv"), predictor=str(predictor))
    train_stage(with_predictions(train, predictor), with_predictions(val, predictor), run, log=log)
    return checkpoint
