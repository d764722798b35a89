"""Cascade bookkeeping: which grid each stage works on, and chaining the stages.

A cascade is a list of per-stage integer factors, e.g. ``[2, 2]`` for x4 in
two x2 stages (cascaded diffusion, Ho et al. 2022); a stage's factor is one
integer for all three axes or one per axis (``[[1, 1, 4]]``: one stage making
slices four times thinner along the third voxel axis; ``data.degrade.as_factor3``).
Grids are per axis: factors multiply and divide axis by axis. Stage k maps the grid
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

from mrisr.data.degrade import Factor, SliceProfile, as_factor3, downsample, downsample_mask, upsample

StageFactors = Sequence["int | Sequence[int]"]  # the config's cascade.factors


def stage_factors(factors: StageFactors) -> list[Factor]:
    """Each stage's factor per axis, checked: every stage makes at least one axis at least 2 times finer."""
    if not factors:
        raise ValueError("a cascade needs at least one stage factor")
    try:
        per_axis = [as_factor3(f) for f in factors]
    except ValueError:
        per_axis = []
    if not per_axis or any(max(f) < 2 for f in per_axis):
        raise ValueError(f"stage factors must be integers >= 2, or three integers >= 1 (one per axis) with one "
                         f">= 2, got {list(factors)}")
    return per_axis


def total_factor(factors: StageFactors) -> Factor:
    """The whole cascade's scale factor per axis: the product of the stage factors, axis by axis."""
    return tuple(math.prod(axis) for axis in zip(*stage_factors(factors)))  # type: ignore[return-value]


@dataclass(frozen=True)
class StageGrid:
    stage: int
    factor: Factor  # this stage's upsampling factor, per axis
    input_factor: Factor  # input grid is this many times coarser than HR
    output_factor: Factor  # output grid is this many times coarser than HR


def stage_grids(factors: StageFactors) -> list[StageGrid]:
    """The grid of every stage, coarse to fine."""
    grids, inp = [], total_factor(factors)
    for k, f in enumerate(stage_factors(factors)):
        out = tuple(i // s for i, s in zip(inp, f))
        grids.append(StageGrid(stage=k, factor=f, input_factor=inp, output_factor=out))  # type: ignore[arg-type]
        inp = out
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
    factors: StageFactors,
    stage: int,
    order: int = 3,
    method: str = "spline",
    profile: SliceProfile | None = None,
) -> StagePair:
    """Condition, target and mask of ``stage`` for one subject (teacher forcing, see module doc)."""
    grid = stage_grids(factors)[stage]
    target = downsample(hr, grid.output_factor, order, method, profile)
    stage_input = lr if stage == 0 else downsample(hr, grid.input_factor, order, method, profile)
    expected = tuple(s // f for s, f in zip(hr.shape, grid.input_factor))
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
