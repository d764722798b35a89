"""Noise schedules and the closed-form Gaussian algebra of a DDPM.

Everything here is a pure function of the schedule: no network, no sampler
loop. Notation follows Ho et al. (2020), "Denoising Diffusion Probabilistic
Models" (DDPM), with one addition from the seed method: the noise has
variance ``noise_var`` (0.3 by default) instead of 1,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   eps ~ N(0, noise_var I)   (DDPM eq. 4)

which is what a forward kernel q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1},
noise_var beta_t I) produces. Its posterior (DDPM eqs. 6-7) is

    q(x_{t-1} | x_t, x_0) = N(mu_t, noise_var * betatilde_t I)
    mu_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
           + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    betatilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t.

Index convention (as in improved-diffusion): arrays have length T and entry
``i`` holds the value at diffusion time t = i + 1, so ``alphas_cumprod[0]`` is
abar_1 and ``alphas_cumprod_prev[0]`` is abar_0 = 1. Timesteps passed to the
functions below are these indices, a LongTensor of shape (N,).

Two schedules are offered, both named in config (``diffusion.schedule``):

``cosine`` (default)
    Nichol & Dhariwal (2021), "Improved DDPM", eq. 17:
    abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008,
    beta_t = 1 - abar_t / abar_{t-1} clipped to ``max_beta`` = 0.999.
``seed``
    The seed paper's literal formula: alpha_t = cos^2(pi t / (2T)) and abar_t
    their running product. Measured (``benchmarks/schedule.py``, T = 1000):
    abar_t < 1e-3 already at t = 203, so 80 % of the 1000 steps see
    essentially pure noise and carry no signal for the network to learn from;
    the cosine schedule reaches abar_t < 1e-3 only at t = 980 (2 % of steps). That is why
    ``cosine`` is the default; ``seed`` exists to reproduce the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from mrisr.config import SamplingOptions, section

if TYPE_CHECKING:  # torch is imported by ``extract``, the one function that makes tensors,
    import torch  # so the schedule's arithmetic (and the report's schedule figure) runs without it

ScheduleName = Literal["cosine", "seed"]
SCHEDULES: tuple[str, ...] = ("cosine", "seed")


def alphas_cumprod_cosine(num_timesteps: int, s: float = 0.008) -> np.ndarray:
    """abar_t for t = 1..T of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64."""
    t = np.arange(num_timesteps + 1, dtype=np.float64)
    f = np.cos(((t / num_timesteps + s) / (1.0 + s)) * math.pi / 2.0) ** 2
    return f[1:] / f[0]


def alphas_cumprod_seed(num_timesteps: int) -> np.ndarray:
    """abar_t for t = 1..T of the seed's literal schedule: prod_{s<=t} cos^2(pi s / 2T), float64."""
    t = np.arange(1, num_timesteps + 1, dtype=np.float64)
    alphas = np.cos(math.pi * t / (2.0 * num_timesteps)) ** 2
    return np.cumprod(alphas)


def betas_from_alphas_cumprod(alphas_cumprod: np.ndarray, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = 1 - abar_t / abar_{t-1} (abar_0 = 1), clipped to ``max_beta`` (Improved DDPM sec. 3.2)."""
    prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        betas = 1.0 - np.where(prev > 0, alphas_cumprod / np.where(prev > 0, prev, 1.0), 0.0)
    return np.clip(betas, 0.0, max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule and the quantities derived from it.

    All arrays are float64 numpy arrays of length ``num_timesteps`` (entry i
    is time t = i + 1). ``timestep_map[i]`` is the training timestep index
    that entry i corresponds to: the identity for a full schedule, the kept
    indices for a respaced one (improved-diffusion ``respace.py``), so a
    network always sees the timestep it was trained on.
    """

    betas: np.ndarray
    noise_var: float
    timestep_map: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """noise_var * betatilde_t (DDPM eq. 7, scaled by the noise variance)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.noise_var * self.betas * (1.0 - abar_prev) / (1.0 - abar)

    @property
    def posterior_mean_coef_x0(self) -> np.ndarray:
        """Coefficient of x_0 in mu_t (DDPM eq. 7)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.betas * np.sqrt(abar_prev) / (1.0 - abar)

    @property
    def posterior_mean_coef_xt(self) -> np.ndarray:
        """Coefficient of x_t in mu_t (DDPM eq. 7)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return (1.0 - abar_prev) * np.sqrt(self.alphas) / (1.0 - abar)

    def respace(self, use_timesteps: Sequence[int]) -> "NoiseSchedule":
        """A schedule on a subset of timestep indices with the same marginals.

        The new betas are beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}, so that
        abar'_k equals abar at the kept timestep t_k (improved-diffusion
        ``respace.py``; DDIM, Song et al. 2021, sec. 4.2). Ancestral sampling on
        the respaced schedule is the few-step DDPM sampler.
        """
        kept = sorted(set(int(t) for t in use_timesteps))
        if not kept:
            raise ValueError("respace needs at least one timestep")
        if kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps - 1}], got {kept[0]}..{kept[-1]}"
            )
        abar = self.alphas_cumprod[kept]
        prev = np.concatenate([[1.0], abar[:-1]])
        betas = 1.0 - abar / prev
        return NoiseSchedule(
            betas=betas, noise_var=self.noise_var, timestep_map=self.timestep_map[kept]
        )


def make_schedule(
    name: str = "cosine",
    num_timesteps: int = 1000,
    noise_var: float = 0.3,
    max_beta: float = 0.999,
) -> NoiseSchedule:
    """Build a named schedule. ``name`` is one of ``SCHEDULES``."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0, got {noise_var}")
    if name == "cosine":
        abar = alphas_cumprod_cosine(num_timesteps)
    elif name == "seed":
        abar = alphas_cumprod_seed(num_timesteps)
    else:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    return NoiseSchedule(
        betas=betas_from_alphas_cumprod(abar, max_beta),
        noise_var=float(noise_var),
        timestep_map=np.arange(num_timesteps),
    )


def full_schedule(diffusion: Mapping[str, Any]) -> NoiseSchedule:
    """The T-step schedule of a ``diffusion`` config section (a stage is trained and sampled on it)."""
    d = section("diffusion", diffusion)
    return make_schedule(d["schedule"], int(d["num_timesteps"]), float(d["noise_var"]))


def sampling_schedule(diffusion: Mapping[str, Any], sampling: SamplingOptions) -> NoiseSchedule:
    """The schedule the sampler walks: the full one (ancestral over all T steps) or a respaced one.

    ``sampling.steps_run`` steps are spread over [1, start_t] (t = T unless
    ``sampling.start_t`` truncates the reverse process).
    """
    full = full_schedule(diffusion)
    t_max = full.num_timesteps - 1 if sampling.start_t is None else int(sampling.start_t) - 1
    steps = sampling.steps_run
    if sampling.method == "ancestral" and steps >= full.num_timesteps and sampling.start_t is None:
        return full
    return full.respace(spaced_timesteps(full.num_timesteps, min(steps, t_max + 1), t_max))


def spaced_timesteps(num_timesteps: int, num_steps: int, t_max: int | None = None) -> list[int]:
    """``num_steps`` timestep indices evenly spread over [0, t_max], always keeping t_max.

    ``t_max`` defaults to T - 1 (t = T), so sampling starts from the prior; a
    smaller ``t_max`` truncates the reverse process. The first kept index is
    as close to 0 as the spacing allows.
    """
    t_max = num_timesteps - 1 if t_max is None else int(t_max)
    if not 0 <= t_max < num_timesteps:
        raise ValueError(f"t_max must lie in [0, {num_timesteps - 1}], got {t_max}")
    if not 1 <= num_steps <= t_max + 1:
        raise ValueError(f"num_steps must lie in [1, {t_max + 1}], got {num_steps}")
    steps = np.round(np.linspace(0, t_max, num_steps)).astype(int) if num_steps > 1 else np.array([t_max])
    return sorted(set(int(s) for s in steps))


def extract(values: np.ndarray | torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` and reshape to (N, 1, ..., 1) with ``ndim`` dims in all.

    ``t`` is a LongTensor of shape (N,); the result is float32 on t's device,
    ready to broadcast against a batch of shape (N, C, *spatial).
    """
    import torch

    table = torch.as_tensor(values, dtype=torch.float64, device=t.device)
    out = table[t].to(torch.float32)
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


def q_sample(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) noise_var I) (DDPM eq. 4).

    ``noise`` is a *unit* normal draw of x0's shape (N, C, *spatial); it is
    scaled by sqrt(noise_var) here, so eps = sqrt(noise_var) * noise.
    """
    abar = extract(schedule.alphas_cumprod, t, x0.ndim)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * math.sqrt(schedule.noise_var) * noise


def posterior_mean_variance(
    schedule: NoiseSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7 with noise_var).

    Returns (mean of x0's shape, variance of shape (N, 1, ..., 1)).
    """
    mean = (
        extract(schedule.posterior_mean_coef_x0, t, xt.ndim) * x0
        + extract(schedule.posterior_mean_coef_xt, t, xt.ndim) * xt
    )
    return mean, extract(schedule.posterior_variance, t, xt.ndim)


def predict_x0_from_eps(
    schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, unit_eps: torch.Tensor
) -> torch.Tensor:
    """Invert DDPM eq. 4: x_0 = (x_t - sqrt(1 - abar_t) sqrt(noise_var) eps) / sqrt(abar_t)."""
    abar = extract(schedule.alphas_cumprod, t, xt.ndim)
    return (xt - (1.0 - abar).sqrt() * math.sqrt(schedule.noise_var) * unit_eps) / abar.sqrt()


def predict_eps_from_x0(
    schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The unit noise implied by (x_t, x_0): eps = (x_t - sqrt(abar_t) x_0) / (sqrt(1 - abar_t) sqrt(noise_var))."""
    abar = extract(schedule.alphas_cumprod, t, xt.ndim)
    return (xt - abar.sqrt() * x0) / ((1.0 - abar).sqrt() * math.sqrt(schedule.noise_var))


def v_target(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, unit_eps: torch.Tensor
) -> torch.Tensor:
    """Velocity target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 / sqrt(noise_var).

    Salimans & Ho (2022), "Progressive Distillation", sec. 4, written for the
    rescaled variable x / sqrt(noise_var), whose noise is unit.
    """
    abar = extract(schedule.alphas_cumprod, t, x0.ndim)
    return abar.sqrt() * unit_eps - (1.0 - abar).sqrt() * x0 / math.sqrt(schedule.noise_var)


def predict_x0_from_v(
    schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) sqrt(noise_var) v (inverse of ``v_target``)."""
    abar = extract(schedule.alphas_cumprod, t, xt.ndim)
    return abar.sqrt() * xt - (1.0 - abar).sqrt() * math.sqrt(schedule.noise_var) * v
