"""What the network predicts (eps, x0, v or edm) and what is diffused (image or residual).

``prediction`` names the network's output (Ho et al. 2020 predict eps;
SR3-style x0; Salimans & Ho 2022 v; ``edm``: x0 through the preconditioning
of Karras et al. 2022, see ``edm_coefficients``). ``target`` names the variable x_0 that
is diffused: the HR ``image`` itself; the ``residual`` HR minus the
spline-upsampled condition (as in ResShift/ResDiff), which is small and
zero-mean so the network only has to add what the spline misses; or the
``predictor_residual`` HR minus the stage's predictor g(LR) (predict, then
refine: Whang et al. 2022; ResDiff trains its CNN first and the diffusion
on HR minus its output), the network conditioned on the spline and on g.
The base a residual is taken over is the condition's last channel
(``base``): the spline for ``residual``, g for ``predictor_residual``.

The residual is multiplied by ``scale`` (``diffusion.residual_scale``): HR
minus spline has a standard deviation of a few per cent of the intensity
range, far below the noise's sqrt(noise_var) = 0.55, so unscaled nearly the
whole schedule is noise-dominated and the network's outputs are tiny next to
the step size of Adam. Scaling it to the noise's size is the unit-variance
scaling of latent diffusion (Rombach et al. 2022, sec. 3.3 / appendix G)
applied to the residual.

All four settings travel together as one ``Parameterization``, built once
from the ``diffusion`` config section (``Parameterization.from_diffusion``)
and used alike by training (``target``), sampling (``to_x0``) and the
analytic variance: what the network's output means is decided in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch

from mrisr.config import section
from mrisr.diffusion.schedule import (
    NoiseSchedule,
    extract,
    predict_x0_from_eps,
    predict_x0_from_v,
    v_target,
)

Prediction = Literal["eps", "x0", "v", "edm"]
Target = Literal["predictor_residual", "residual", "image"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "edm")
TARGETS: tuple[str, ...] = ("predictor_residual", "residual", "image")


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


# For each prediction: (the training target for (x_0, t, unit noise), the x_0 an output implies at (x_t, t)).
_Target = Callable[[NoiseSchedule, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
_ToX0 = Callable[[NoiseSchedule, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _edm_target(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sd: float):
    sqrt_abar, c_skip, c_out = edm_coefficients(schedule, t, x0.ndim, sd)
    u = x0 + ((1.0 - sqrt_abar**2).sqrt() / sqrt_abar) * math.sqrt(schedule.noise_var) * noise
    return (x0 - c_skip * u) / c_out


def _edm_to_x0(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor, sd: float):
    sqrt_abar, c_skip, c_out = edm_coefficients(schedule, t, xt.ndim, sd)
    return c_skip * xt / sqrt_abar + c_out * output


_RULES: dict[str, tuple[_Target, _ToX0]] = {
    "eps": (lambda schedule, x0, t, noise, sd: noise,
            lambda schedule, xt, t, out, sd: predict_x0_from_eps(schedule, xt, t, out)),
    "x0": (lambda schedule, x0, t, noise, sd: x0,
           lambda schedule, xt, t, out, sd: out),
    "v": (lambda schedule, x0, t, noise, sd: v_target(schedule, x0, t, noise),
          lambda schedule, xt, t, out, sd: predict_x0_from_v(schedule, xt, t, out)),
    "edm": (_edm_target, _edm_to_x0),
}


@dataclass(frozen=True)
class Parameterization:
    """What is diffused and what the network outputs (the ``diffusion`` section's
    prediction, target, residual_scale and sigma_data; meanings in the module doc).

    ``residual_scale`` is 1 when the image itself is diffused.
    """

    prediction: Prediction
    target: Target
    residual_scale: float
    sigma_data: float

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; allowed: {', '.join(TARGETS)}")

    @classmethod
    def from_diffusion(cls, diffusion: Mapping[str, Any]) -> "Parameterization":
        """From a ``diffusion`` config section, the schema's defaults filled in (old checkpoints lack some keys)."""
        d = section("diffusion", diffusion)
        scale = float(d["residual_scale"]) if d["target"] != "image" else 1.0
        return cls(d["prediction"], d["target"], scale, float(d["sigma_data"]))

    @property
    def residual(self) -> bool:
        """Whether a residual over a base (the spline or the predictor) is diffused, not the image."""
        return self.target != "image"

    @property
    def cond_channels(self) -> int:
        """Channels of the network's condition: the spline-upsampled input, and g's output for ``predictor_residual``."""
        return 2 if self.target == "predictor_residual" else 1

    @staticmethod
    def base(cond: torch.Tensor) -> torch.Tensor:
        """What a residual is taken over: the condition's last channel (the spline, or the predictor's output)."""
        return cond[:, -1:]

    def to_diffusion_space(self, volume: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_0 for a ground-truth volume: the volume, or ``residual_scale`` times its residual over ``base(cond)``."""
        return self.residual_scale * (volume - self.base(cond)) if self.residual else volume

    def from_diffusion_space(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The volume an x_0 stands for (inverse of ``to_diffusion_space``)."""
        return self.base(cond) + x0 / self.residual_scale if self.residual else x0

    def x0_range(self) -> tuple[float, float]:
        """Where x_0 can lie for volumes normalised to [0, 1]; sampled x0_hat is clipped to it."""
        return (-self.residual_scale, self.residual_scale) if self.residual else (0.0, 1.0)

    def regression_target(
        self, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, unit_noise: torch.Tensor
    ) -> torch.Tensor:
        """What the network is trained to output for (x_0, t, noise)."""
        return _RULES[self.prediction][0](schedule, x0, t, unit_noise, self.sigma_data)

    def output_to_x0(
        self, schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """The x_0 estimate implied by the network's output at (x_t, t)."""
        return _RULES[self.prediction][1](schedule, xt, t, output, self.sigma_data)

    def x0_estimate(
        self, schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """``output_to_x0`` clipped to ``x0_range``, as the sampler and the analytic variance use it."""
        lo, hi = self.x0_range()
        return self.output_to_x0(schedule, xt, t, output).clamp(lo, hi)
