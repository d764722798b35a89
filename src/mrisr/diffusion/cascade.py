"""Cascade bookkeeping: which grid each stage works on, and chaining the stages.

A cascade is a list of per-stage integer factors, e.g. ``[2, 2]`` for x4 in
two x2 stages (cascaded diffusion, Ho et al. 2022). Stage k maps the grid
``input_factor`` times coarser than HR onto the grid ``output_factor`` times
coarser, with input_factor = output_factor * factors[k]. The first stage's
input is the LR volume; stage k > 0 conditions on stage k-1's output.

In training every stage sees its input made from the HR volume by the same
degradation as the LR volume (teacher forcing); the first stage's input is the
LR volume itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mrisr.data.degrade import downsample, downsample_mask, upsample


def total_factor(factors: Sequence[int]) -> int:
    """The whole cascade's scale factor: the product of the stage factors."""
    if not factors:
        raise ValueError("a cascade needs at least one stage factor")
    for f in factors:
        if int(f) != f or f < 2:
            raise ValueError(f"stage factors must be integers >= 2, got {list(factors)}")
    return int(math.prod(factors))


@dataclass(frozen=True)
class StageGrid:
    stage: int
    factor: int  # this stage's upsampling factor
    input_factor: int  # input grid is this many times coarser than HR
    output_factor: int  # output grid is this many times coarser than HR


def stage_grids(factors: Sequence[int]) -> list[StageGrid]:
    """The grid of every stage, coarse to fine."""
    total = total_factor(factors)
    grids, inp = [], total
    for k, f in enumerate(factors):
        grids.append(StageGrid(stage=k, factor=int(f), input_factor=inp, output_factor=inp // int(f)))
        inp //= int(f)
    return grids


@dataclass(frozen=True)
class StagePair:
    """Training data of one stage for one subject, all on the stage's output grid."""

    cond: np.ndarray  # spline-upsampled input (the network's condition)
    target: np.ndarray  # the volume to recover
    mask: np.ndarray  # brain mask, bool
    pred: np.ndarray | None = None  # the stage predictor's output g(LR), once it is trained (predict, then refine)


def stage_pair(
    hr: np.ndarray,
    lr: np.ndarray,
    mask: np.ndarray,
    factors: Sequence[int],
    stage: int,
    order: int = 3,
    method: str = "spline",
) -> StagePair:
    """Condition, target and mask of ``stage`` for one subject (teacher forcing, see module doc)."""
    grid = stage_grids(factors)[stage]
    target = downsample(hr, grid.output_factor, order, method)
    stage_input = lr if stage == 0 else downsample(hr, grid.input_factor, order, method)
    expected = tuple(s // grid.input_factor for s in hr.shape)
    if stage_input.shape != expected:
        raise ValueError(f"LR shape {stage_input.shape} does not match HR {hr.shape} / {grid.input_factor}")
    cond = upsample(stage_input, grid.factor, order)
    return StagePair(cond=cond, target=target, mask=downsample_mask(mask, grid.output_factor))


def run_cascade(
    lr: np.ndarray, stages: Sequence[Callable[[np.ndarray], np.ndarray]]
) -> list[np.ndarray]:
    """Apply stage functions in order, each on the previous output; returns every stage's output."""
    outputs, current = [], lr
    for stage_fn in stages:
        current = stage_fn(current)
        outputs.append(current)
    return outputs
