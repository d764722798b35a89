"""Reverse processes: ancestral (DDPM) and few-step (DDIM) sampling, patch-blended.

The sampler owns the order of the reverse steps and the noise; the network is
reached only through a ``Denoiser``, a callable ``(x_t, i) -> x0_hat`` where
``i`` indexes the (possibly respaced) schedule. A denoiser built with
``sliding_window`` predicts a whole volume from overlapping patches blended
into one estimate, so every reverse step updates the full volume with one
noise field and the sample has no seams.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from mrisr.diffusion.schedule import (
    NoiseSchedule,
    extract,
    posterior_mean_variance,
    predict_eps_from_x0,
    q_sample,
)

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
SamplerName = Literal["ancestral", "ddim"]
SAMPLERS: tuple[str, ...] = ("ancestral", "ddim")


def _noise(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Unit normal noise drawn on the CPU generator (device-independent streams), moved to ``like``."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(like.device)


def ancestral_step(
    schedule: NoiseSchedule,
    x0_hat: torch.Tensor,
    xt: torch.Tensor,
    i: int,
    generator: torch.Generator | None = None,
    x0_var: float = 0.0,
) -> torch.Tensor:
    """One draw from q(x_{t-1} | x_t, x0_hat) (DDPM eqs. 6-7); no noise at the last step (i = 0).

    ``x0_var`` > 0 adds the x0 prediction's own error to the step's variance:
    beta_tilde_t + c_0^2 x0_var with c_0 the posterior mean's coefficient of
    x0 (the optimal Gaussian reverse variance of Analytic-DPM, Bao et al.
    2022, Thm 1, written with the x0 error Gamma_t = E||x0 - x0_hat||^2 / d).
    """
    t = torch.full((xt.shape[0],), i, dtype=torch.long, device=xt.device)
    mean, variance = posterior_mean_variance(schedule, x0_hat, xt, t)
    if i == 0:
        return mean
    if x0_var:
        variance = variance + float(schedule.posterior_mean_coef_x0[i]) ** 2 * x0_var
    return mean + variance.sqrt() * _noise(xt.shape, generator, xt)


def ddim_step(
    schedule: NoiseSchedule,
    x0_hat: torch.Tensor,
    xt: torch.Tensor,
    i: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x0_var: float = 0.0,
) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, eq. 12) in units where the noise has variance ``noise_var``.

    x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) s eps_hat + lambda z,
    sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}), s = sqrt(noise_var),
    lambda^2 = sigma^2 s^2. eta = 0 is deterministic; eta = 1 has the posterior's variance.

    ``x0_var`` > 0 (the x0 prediction's mean squared error Gamma_t) gives the
    optimal variance of Analytic-DPM (Bao et al. 2022, Thm 1):
    lambda^2 = sigma^2 s^2 + c_0^2 Gamma_t, with
    c_0 = sqrt(abar_{t-1}) - sqrt(1 - abar_{t-1} - sigma^2) sqrt(abar_t / (1 - abar_t))
    the update's coefficient of x0_hat once eps_hat is written through it.
    A large step trusts x0_hat as if it were x0; this puts the x0 prediction's
    own uncertainty back, which the many small steps of the ancestral sampler
    accumulate on their own.
    """
    t = torch.full((xt.shape[0],), i, dtype=torch.long, device=xt.device)
    eps_hat = predict_eps_from_x0(schedule, xt, t, x0_hat)
    abar = extract(schedule.alphas_cumprod, t, xt.ndim)
    abar_prev = extract(schedule.alphas_cumprod_prev, t, xt.ndim)
    sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
    s = math.sqrt(schedule.noise_var)
    direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
    out = abar_prev.sqrt() * x0_hat + direction * s * eps_hat
    if i == 0:
        return out
    if x0_var:
        c0 = abar_prev.sqrt() - direction * (abar / (1 - abar)).sqrt()
        std = (sigma**2 * s**2 + c0**2 * x0_var).sqrt()
        return out + std * _noise(xt.shape, generator, xt)
    if eta > 0:
        out = out + sigma * s * _noise(xt.shape, generator, xt)
    return out


def prior_sample(
    schedule: NoiseSchedule,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """x_T ~ N(0, noise_var I), where the full reverse process starts (``start_from`` truncates it)."""
    return math.sqrt(schedule.noise_var) * _noise(shape, generator, torch.empty(0, device=device))


def sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x_start: torch.Tensor,
    *,
    method: str = "ddim",
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    x0_var: Sequence[float] | None = None,
) -> torch.Tensor:
    """Run the reverse process from the schedule's last step down to an estimate of x_0.

    ``schedule`` is the full schedule (1000-step ancestral sampling) or a
    ``respace``d one (few-step sampling); steps run i = T'-1, ..., 0.
    ``x_start`` is x at the schedule's last step: pure noise
    (``prior_sample``), or a draw from q(x_t | x0_init) that truncates the
    reverse process (``start_from``). ``x0_var[i]``, when given, is the x0
    prediction's mean squared error at step i, for the analytic variance of
    ``ddim_step`` / ``ancestral_step``. Returns a tensor of ``x_start``'s shape.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; allowed: {', '.join(SAMPLERS)}")
    n = schedule.num_timesteps
    if x0_var is not None and len(x0_var) != n:
        raise ValueError(f"x0_var has {len(x0_var)} entries for a schedule of {n} steps")
    xt = x_start
    for step, i in enumerate(reversed(range(n))):
        x0_hat = denoise(xt, i)
        gamma = float(x0_var[i]) if x0_var is not None else 0.0
        if method == "ancestral":
            xt = ancestral_step(schedule, x0_hat, xt, i, generator, gamma)
        else:
            xt = ddim_step(schedule, x0_hat, xt, i, eta, generator, gamma)
        if progress is not None:
            progress(step + 1, n)
    return xt


def start_from(
    schedule: NoiseSchedule, x0_init: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_t at the schedule's last step drawn from q(x_t | x0_init) (DDPM eq. 4).

    Starting the reverse process here instead of from pure noise is the
    truncated reverse process of SDEdit (Meng et al. 2022) and of diffusion
    super-resolution methods that start from the interpolated input: the
    sampler only has to add the detail that noise at this level has erased.
    """
    last = torch.full((x0_init.shape[0],), schedule.num_timesteps - 1, dtype=torch.long, device=x0_init.device)
    return q_sample(schedule, x0_init, last, _noise(x0_init.shape, generator, x0_init))


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of patches of side ``patch`` covering [0, size) with the given overlap fraction."""
    if patch >= size:
        return [0]
    stride = max(1, int(round(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch, stride))
    starts.append(size - patch)
    return sorted(set(starts))


def blend_window(shape: Sequence[int]) -> torch.Tensor:
    """Separable weights, highest at the patch centre and small but > 0 at its faces.

    Per axis w(k) = sin(pi (k + 0.5) / n) + 1e-3; overlapping predictions are
    averaged with these weights so patch borders, where a convolution sees
    zero padding, count least.
    """
    window = torch.ones(())
    for n in shape:
        k = torch.arange(n, dtype=torch.float32)
        w = torch.sin(math.pi * (k + 0.5) / n) + 1e-3
        window = window[..., None] * w
    return window


def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    patch_size: int,
    overlap: float = 0.25,
    batch_size: int = 1,
) -> torch.Tensor:
    """Apply ``predict`` to overlapping patches of ``inputs`` and blend into one output.

    ``inputs``: (1, C, *S). ``predict``: (B, C, *P) -> (B, 1, *P). Returns
    (1, 1, *S). Patches have side min(patch_size, S_d) along each axis.
    """
    spatial = inputs.shape[2:]
    sides = [min(patch_size, s) for s in spatial]
    grids = [patch_starts(s, p, overlap) for s, p in zip(spatial, sides)]
    corners = [tuple(c) for c in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, len(spatial))]
    window = blend_window(sides).to(inputs.device)
    out = torch.zeros((1, 1, *spatial), device=inputs.device)
    weight = torch.zeros((1, 1, *spatial), device=inputs.device)
    for b in range(0, len(corners), batch_size):
        chunk = corners[b : b + batch_size]
        boxes = [tuple(slice(int(c), int(c) + p) for c, p in zip(corner, sides)) for corner in chunk]
        batch = torch.cat([inputs[(slice(None), slice(None), *box)] for box in boxes])
        pred = predict(batch).float()
        for k, box in enumerate(boxes):
            out[(slice(None), slice(None), *box)] += pred[k : k + 1] * window
            weight[(slice(None), slice(None), *box)] += window
    return out / weight
