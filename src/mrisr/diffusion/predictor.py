"""The deterministic predictor g of predict-and-refine: a residual CNN on the LR grid, upsampling at its end.

Predict, then refine (Whang et al., CVPR 2022, "Deblurring via Stochastic
Refinement"; ResDiff, Shang et al., AAAI 2024): each cascade stage first
trains a network g with a pixel loss, whose output is the stage's
deterministic estimate; the stage's diffusion model then learns only what g
misses, x_0 - g(LR).

``ShuffleResNet`` is g. Its input is the stage's condition (the spline-
upsampled LR, on the stage's output grid), which it folds back onto the LR
grid without losing a voxel (space-to-depth, ``pixel_unshuffle_3d``: f^3
channels per LR voxel at factor f, a b c at a per-axis factor (a, b, c));
an EDSR-style body (Lim et al. 2017: residual blocks of conv-ReLU-conv
without normalisation, a constant residual scale) works there, at 1/f^3 of
the voxels of the output grid, and a last convolution gives f^3 channels
that depth-to-space (``pixel_shuffle_3d``, the 3D
sub-pixel convolution of Shi et al. 2016) turns into the output grid. The
output is added to the condition (global residual learning, VDSR: Kim et al.
2016), so an untrained g (its last layer starts at zero) is the spline.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrisr.data.degrade import as_factor3, factor_label
from mrisr.device import autocast
from mrisr.diffusion.cascade import stage_grids

MIRRORINGS = tuple(tuple(d for d in range(3) if k >> d & 1) for k in range(8))  # the 8 mirrorings of a volume


def pixel_unshuffle_3d(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """(N, C, a D, b H, c W) -> (N, C a b c, D, H, W) for ``factor`` (a, b, c), or f for all three: each block
    of voxels becomes channels."""
    n, c, d, h, w = x.shape
    a, b, e = as_factor3(factor)
    if d % a or h % b or w % e:
        raise ValueError(f"spatial shape {(d, h, w)} is not divisible by the factor {factor_label((a, b, e))}")
    x = x.reshape(n, c, d // a, a, h // b, b, w // e, e)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(n, c * a * b * e, d // a, h // b, w // e)


def pixel_shuffle_3d(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """(N, C a b c, D, H, W) -> (N, C, a D, b H, c W): the inverse of ``pixel_unshuffle_3d``."""
    n, cf, d, h, w = x.shape
    a, b, e = as_factor3(factor)
    cells = a * b * e
    if cf % cells:
        raise ValueError(f"{cf} channels are not a multiple of the {cells} voxels of a {factor_label((a, b, e))} block")
    c = cf // cells
    x = x.reshape(n, c, a, b, e, d, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(n, c, d * a, h * b, w * e)


class _Block(nn.Module):
    """conv-ReLU-conv with the input added back, the branch scaled by ``res_scale`` (EDSR)."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class ShuffleResNet(nn.Module):
    """g(cond) = cond + shuffle(body(unshuffle(cond))): a residual CNN on the grid ``factor`` times coarser.

    ``forward(cond)``: cond (N, cond_channels, *S), S divisible by ``factor``
    (its first channel is the spline-upsampled LR the output is added to)
    -> (N, 1, *S).
    """

    def __init__(self, factor: int | Sequence[int] = 2, channels: int = 32, blocks: int = 4,
                 cond_channels: int = 1, res_scale: float = 1.0) -> None:
        super().__init__()
        if channels < 1 or blocks < 0:
            raise ValueError(f"channels {channels} and blocks {blocks} must be positive")
        self.factor = as_factor3(factor)  # per axis
        cells = math.prod(self.factor)
        self.head = nn.Conv3d(cond_channels * cells, channels, 3, padding=1)
        self.body = nn.Sequential(*[_Block(channels, res_scale) for _ in range(blocks)])
        self.tail = nn.Conv3d(channels, cells, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # an untrained predictor is the spline
        nn.init.zeros_(self.tail.bias)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Spatial sides must be multiples of this, per axis."""
        return self.factor

    @property
    def radius(self) -> int:
        """How far (voxels of the LR grid) an output voxel sees: one voxel per 3^3 convolution."""
        return 2 + 2 * len(self.body)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        h = self.head(pixel_unshuffle_3d(cond, self.factor))
        h = h + self.body(h)
        return cond[:, :1] + pixel_shuffle_3d(self.tail(h), self.factor)


def predictor_from_config(predictor: Mapping, factor: int | Sequence[int]) -> ShuffleResNet:
    """The predictor of one cascade stage from the config's ``predictor`` section."""
    return ShuffleResNet(factor=factor, channels=int(predictor["channels"]), blocks=int(predictor["blocks"]),
                         res_scale=float(predictor.get("res_scale", 1.0)))


@torch.no_grad()
def predict_volume(model: ShuffleResNet, cond: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """g over a whole volume, (1, C, *S) -> (1, 1, *S), in slabs of ``chunk`` LR voxels along the first axis.

    Each slab is computed with ``model.radius`` LR voxels of the volume on
    either side (a convolution's zero padding reaches no further than that),
    so the slabs join into exactly the whole-volume pass with a fraction of
    its memory: a 0.7 mm HCP volume's 32 feature maps on the LR grid alone
    take 340 MB.
    """
    f, n = model.factor[0], cond.shape[2]
    step, halo = chunk * f, model.radius * f
    outs = []
    for start in range(0, n, step):
        lo, hi = max(0, start - halo), min(n, start + step + halo)
        out = model(cond[:, :, lo:hi])
        outs.append(out[:, :, start - lo: start - lo + min(step, n - start)])
    return torch.cat(outs, dim=2)


def predictor_output(model: ShuffleResNet, cond: np.ndarray, flips: Sequence[tuple[int, ...]]) -> np.ndarray:
    """g over a whole stage condition (the spline-upsampled input), averaged over ``flips``; float32 on the
    condition's grid, not clipped (the diffusion's residual is taken over it as trained)."""
    device = next(model.parameters()).device
    total = np.zeros(cond.shape, np.float64)
    for axes in flips:
        x = torch.from_numpy(np.ascontiguousarray(np.flip(cond, axes)))[None, None].to(device)
        with autocast(device):
            out = predict_volume(model, x).float()[0, 0].cpu().numpy()
        total += np.flip(out, axes)
    return (total / len(flips)).astype(np.float32)


def predictor_flips(config: Mapping) -> tuple[tuple[int, ...], ...]:
    """The mirrorings a predictor's output is averaged over: all 8 for one trained with flips (its
    ``predictor.flip``), else none. Part of what g is: the predict rule writes the same average."""
    return MIRRORINGS if bool(config.get("predictor", {}).get("flip", True)) else ((),)


def predictor_from_payload(payload: Mapping) -> ShuffleResNet:
    """A trained predictor from its checkpoint payload (``config``, ``stage``, ``ema``), in eval mode on the CPU."""
    config, stage = payload["config"], int(payload["stage"])
    model = predictor_from_config(config["predictor"], stage_grids(config["cascade"]["factors"])[stage].factor)
    model.load_state_dict(payload["ema"])
    return model.eval()
