"""The x0 prediction's error by timestep, for the analytic reverse variance.

A reverse step from t to s < t draws x_s around c_0 x0_hat + c_t x_t. Taking
x0_hat for x0, as DDIM and DDPM do, leaves out the prediction's own
uncertainty; the optimal Gaussian step (Analytic-DPM, Bao et al. 2022, Thm 1)
adds c_0^2 Gamma_t to the variance, with

    Gamma_t = E || x0 - x0_hat(x_t, cond, t) ||^2 / d,

the x0 prediction's mean squared error per voxel at time t (in diffusion
space, the space the sampler works in). With 1000 small steps c_0^2 is tiny
and the term does not matter; with a few large ones it is what keeps the
samples as spread as the 1000-step sampler's.

Gamma_t is measured once, at the end of training, with the EMA network on the
held-out validation patches at ``GRID_POINTS`` timesteps, and stored in the
stage checkpoint (``x0_mse``). Between grid points it is interpolated in log
SNR, and it never exceeds (1 - abar_t) noise_var / abar_t, the error of
x_t / sqrt(abar_t).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mrisr.diffusion.parameterization import Parameterization
from mrisr.diffusion.schedule import NoiseSchedule, q_sample

GRID_POINTS = 20


def log_snr(schedule: NoiseSchedule, timesteps: np.ndarray) -> np.ndarray:
    """log(abar_t / ((1 - abar_t) noise_var)): the signal-to-noise ratio of x_t, in logs."""
    abar = schedule.alphas_cumprod[np.asarray(timesteps)]
    return np.log(abar / ((1.0 - abar) * schedule.noise_var))


def error_grid(schedule: NoiseSchedule, points: int = GRID_POINTS) -> list[int]:
    """Timesteps at which Gamma_t is measured: ``points`` evenly spaced in log
    SNR from t = 0 down to log SNR -8 (below it Gamma_t is the data's own
    spread and flat), plus the last timestep. With 20 points the log-SNR
    interpolation of ``x0_var_on`` is within 3.5 % of the closed form for
    Gaussian data of any variance from 1e-4 to 0.1 (tests/test_analytic.py)."""
    every = log_snr(schedule, np.arange(schedule.num_timesteps))
    targets = np.linspace(every[0], max(-8.0, every[-1]), points)
    return sorted({int(np.argmin(np.abs(every - x))) for x in targets} | {schedule.num_timesteps - 1})


def bound(schedule: NoiseSchedule, timesteps: np.ndarray) -> np.ndarray:
    """(1 - abar_t) noise_var / abar_t at the given timesteps of ``schedule``."""
    abar = schedule.alphas_cumprod[np.asarray(timesteps)]
    return (1.0 - abar) * schedule.noise_var / abar


@torch.no_grad()
def measure_x0_error(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    param: Parameterization,
    cond: torch.Tensor,
    volume: torch.Tensor,
    unit_noise: torch.Tensor,
    timesteps: list[int],
) -> list[float]:
    """Gamma_t at each of ``timesteps``: the mean squared error of the x0
    prediction (clamped to the x0 range, as the sampler clamps it) against x0,
    over the given patches, with ``unit_noise`` as the forward noise."""
    x0 = param.to_diffusion_space(volume, cond)
    out = []
    for step in timesteps:
        t = torch.full((x0.shape[0],), int(step), dtype=torch.long, device=x0.device)
        xt = q_sample(schedule, x0, t, unit_noise)
        x0_hat = param.x0_estimate(schedule, xt, t, model(xt, cond, t).float())
        out.append(float((x0_hat - x0).square().mean()))
    return out


def x0_var_on(full: NoiseSchedule, schedule: NoiseSchedule, table: dict) -> np.ndarray:
    """Gamma at every step i of ``schedule`` (``full`` itself or one respaced
    from it) from a checkpoint's ``x0_mse`` table {"t": [...], "mse": [...]}
    measured on ``full``.

    log Gamma is interpolated linearly in log SNR, where it is smooth with
    straight asymptotes (Gamma = bound at high SNR, the data's own spread at
    low SNR; for Gaussian data log Gamma = log v - log(1 + v SNR)), and
    clipped to the bound (``bound``).
    """
    t_grid = np.asarray(table["t"], dtype=np.int64)
    mse = np.asarray(table["mse"], dtype=np.float64)
    if t_grid.ndim != 1 or len(t_grid) < 2 or t_grid.shape != mse.shape or np.any(np.diff(t_grid) <= 0):
        raise ValueError("x0_mse table: needs at least 2 increasing timesteps, one error each")
    if t_grid[0] < 0 or t_grid[-1] >= full.num_timesteps:
        raise ValueError(f"x0_mse table: timesteps outside [0, {full.num_timesteps - 1}]")
    if not np.all(np.isfinite(mse)) or np.any(mse < 0):
        raise ValueError("x0_mse table: errors must be finite and non-negative")
    steps_t = np.asarray(schedule.timestep_map, dtype=np.int64)
    # log SNR falls with t: np.interp wants increasing abscissae.
    log_gamma = np.log(np.maximum(mse, 1e-30))[::-1]
    out = np.exp(np.interp(log_snr(full, steps_t), log_snr(full, t_grid)[::-1], log_gamma))
    return np.minimum(out, bound(full, steps_t))
