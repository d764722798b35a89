"""What the network predicts (eps, x0, v or edm) and what is diffused (image or residual).

``prediction`` names the network's output (Ho et al. 2020 predict eps;
SR3-style x0; Salimans & Ho 2022 v; ``edm``: x0 through the preconditioning
of Karras et al. 2022, see ``edm_coefficients``). ``target`` names the variable x_0 that
is diffused: the HR ``image`` itself, or the ``residual`` HR minus the
spline-upsampled condition (as in ResShift/ResDiff), which is small and
zero-mean so the network only has to add what the spline misses.

The residual is multiplied by ``scale`` (``diffusion.residual_scale``): HR
minus spline has a standard deviation of a few per cent of the intensity
range, far below the noise's sqrt(noise_var) = 0.55, so unscaled nearly the
whole schedule is noise-dominated and the network's outputs are tiny next to
the step size of Adam. Scaling it to the noise's size is the unit-variance
scaling of latent diffusion (Rombach et al. 2022, sec. 3.3 / appendix G)
applied to the residual.
"""

from __future__ import annotations

import math

import torch

from mrisr.diffusion.schedule import (
    NoiseSchedule,
    extract,
    predict_x0_from_eps,
    predict_x0_from_v,
    v_target,
)

PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "edm")
TARGETS: tuple[str, ...] = ("residual", "image")
SIGMA_DATA = 0.05  # diffusion.sigma_data's default (config/config.schema.yaml)


def check(prediction: str, target: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; allowed: {', '.join(TARGETS)}")


def to_diffusion_space(target: str, volume: torch.Tensor, cond: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """x_0 for a ground-truth volume: the volume, or ``scale`` times its residual over the condition."""
    return scale * (volume - cond) if target == "residual" else volume


def from_diffusion_space(target: str, x0: torch.Tensor, cond: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The volume an x_0 stands for (inverse of ``to_diffusion_space``)."""
    return cond + x0 / scale if target == "residual" else x0


def x0_range(target: str, scale: float = 1.0) -> tuple[float, float]:
    """Where x_0 can lie for volumes normalised to [0, 1]; sampled x0_hat is clipped to it."""
    return (-scale, scale) if target == "residual" else (0.0, 1.0)


def residual_scale(diffusion: dict) -> float:
    """The configured residual scale (1 where the config predates it or diffuses the image)."""
    return float(diffusion.get("residual_scale", 1.0)) if diffusion.get("target") == "residual" else 1.0


def sigma_data(diffusion: dict) -> float:
    """The configured sd of x_0 for the ``edm`` preconditioning (diffusion.sigma_data)."""
    return float(diffusion.get("sigma_data", SIGMA_DATA))


def edm_coefficients(
    schedule: NoiseSchedule, t: torch.Tensor, ndim: int, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sqrt(abar_t), c_skip, c_out) of EDM's preconditioning (Karras et al. 2022, Table 1).

    In the variance-exploding view of x_t, u = x_t / sqrt(abar_t) = x_0 + sigma_t s eps
    with sigma_t^2 = (1 - abar_t) noise_var / abar_t, and
    x0_hat = c_skip u + c_out F, c_skip = sigma_d^2 / (sigma_t^2 + sigma_d^2),
    c_out = sigma_t sigma_d / sqrt(sigma_t^2 + sigma_d^2).
    With F = 0, x0_hat is E[x_0 | x_t] for x_0 ~ N(0, sigma_d^2): near t = 0 the
    network only corrects a pass-through of its input, near t = T it predicts
    x_0 / sigma_d, and the target F has unit variance at every t.
    """
    abar = extract(schedule.alphas_cumprod, t, ndim)
    var_t = (1.0 - abar) * schedule.noise_var / abar
    c_skip = sigma_data**2 / (var_t + sigma_data**2)
    c_out = var_t.sqrt() * sigma_data / (var_t + sigma_data**2).sqrt()
    return abar.sqrt(), c_skip, c_out


def regression_target(
    prediction: str, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, unit_noise: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """What the network is trained to output for (x_0, t, noise)."""
    if prediction == "eps":
        return unit_noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_target(schedule, x0, t, unit_noise)
    if prediction == "edm":
        sqrt_abar, c_skip, c_out = edm_coefficients(schedule, t, x0.ndim, sigma_data)
        u = x0 + ((1.0 - sqrt_abar**2).sqrt() / sqrt_abar) * math.sqrt(schedule.noise_var) * unit_noise
        return (x0 - c_skip * u) / c_out
    raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")


def output_to_x0(
    prediction: str, schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """The x_0 estimate implied by the network's output at (x_t, t)."""
    if prediction == "eps":
        return predict_x0_from_eps(schedule, xt, t, output)
    if prediction == "x0":
        return output
    if prediction == "v":
        return predict_x0_from_v(schedule, xt, t, output)
    if prediction == "edm":
        sqrt_abar, c_skip, c_out = edm_coefficients(schedule, t, xt.ndim, sigma_data)
        return c_skip * xt / sqrt_abar + c_out * output
    raise ValueError(f"unknown prediction {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
