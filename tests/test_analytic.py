"""The analytic reverse variance (Analytic-DPM) against closed forms on Gaussian data.

For x0 ~ N(m, v) every conditional is Gaussian: E[x0 | x_t] is linear in x_t
and Gamma_t = Var[x0 | x_t] = v (1 - abar_t) s^2 / (abar_t v + (1 - abar_t) s^2)
does not depend on x_t. A reverse step with the exact x0 prediction and the
variance lambda^2 + c_0^2 Gamma_t is then the exact q(x_s | x_t), so the
sampler's output has the data's variance at any number of steps, where plain
few-step DDIM under-disperses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrisr.diffusion import analytic
from mrisr.diffusion.parameterization import Parameterization
from mrisr.diffusion.sampler import prior_sample, sample
from mrisr.diffusion.schedule import make_schedule, spaced_timesteps

M, V = 0.2, 0.01
FULL = make_schedule("cosine", 1000, 0.3)


def gamma(abar: np.ndarray | float, s2: float = FULL.noise_var) -> np.ndarray:
    """Var[x0 | x_t] for x0 ~ N(M, V)."""
    return V * (1 - abar) * s2 / (abar * V + (1 - abar) * s2)


def posterior_mean(xt: torch.Tensor, abar: float, s2: float = FULL.noise_var) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(M, V)."""
    return M + (abar**0.5 * V / (abar * V + (1 - abar) * s2)) * (xt - abar**0.5 * M)


def draw(steps: int, method: str = "ddim", eta: float = 1.0, analytic_variance: bool = True, n: int = 100_000):
    schedule = FULL if steps >= FULL.num_timesteps else FULL.respace(spaced_timesteps(1000, steps, 999))
    x0_var = gamma(schedule.alphas_cumprod) if analytic_variance else None
    gen = torch.Generator().manual_seed(0)
    x = sample(lambda xt, i: posterior_mean(xt, float(schedule.alphas_cumprod[i])), schedule,
               prior_sample(schedule, (1, 1, n), gen), method=method, eta=eta, generator=gen, x0_var=x0_var)
    return float(x.mean()), float(x.var())


@pytest.mark.parametrize("steps,method,eta", [(2, "ddim", 1.0), (10, "ddim", 1.0), (10, "ddim", 0.0),
                                               (50, "ddim", 1.0), (10, "ancestral", 0.0)])
def test_analytic_variance_gives_the_data_variance_at_any_step_count(steps, method, eta):
    mean, var = draw(steps, method, eta)
    # standard errors: mean sqrt(V / n) = 3e-4, variance V sqrt(2 / n) = 4.5e-5
    assert mean == pytest.approx(M, abs=2e-3) and var == pytest.approx(V, rel=0.03)


def test_plain_few_step_sampling_under_disperses_and_1000_steps_do_not():
    assert draw(10, analytic_variance=False)[1] < 0.5 * V
    assert draw(50, analytic_variance=False)[1] < 0.8 * V
    assert draw(1000, "ancestral", analytic_variance=False)[1] == pytest.approx(V, rel=0.03)


def test_analytic_variance_of_one_step_by_hand():
    """DDIM eta = 1 from t to s: lambda^2 + c_0^2 Gamma with c_0 the posterior mean's x0 coefficient."""
    from mrisr.diffusion.sampler import ddim_step

    schedule = FULL.respace([0, 400, 999])
    i, n = 1, 200_000
    xt = torch.zeros(1, 1, n)
    x0_hat = torch.full((1, 1, n), 0.1)
    out = ddim_step(schedule, x0_hat, xt, i, eta=1.0, generator=torch.Generator().manual_seed(1), x0_var=0.02)
    beta_tilde = float(schedule.posterior_variance[i])
    c0 = float(schedule.posterior_mean_coef_x0[i])
    assert float(out.mean()) == pytest.approx(c0 * 0.1, abs=3e-3)
    assert float(out.var()) == pytest.approx(beta_tilde + c0**2 * 0.02, rel=0.01)


def test_measured_x0_error_is_the_posterior_variance():
    """measure_x0_error with the exact denoiser (an x0-predicting 'model') returns Gamma_t."""
    gen = torch.Generator().manual_seed(2)
    volume = M + V**0.5 * torch.randn(8, 1, 32, 32, 32, generator=gen)
    cond = torch.zeros_like(volume)  # residual target with a zero spline: x0 = volume
    noise = torch.randn(volume.shape, generator=gen)

    def model(xt, cond, t):
        return posterior_mean(xt, float(FULL.alphas_cumprod[int(t[0])]))

    grid = analytic.error_grid(FULL)
    assert grid[0] == 0 and grid[-1] == 999 and len(grid) == analytic.GRID_POINTS + 1
    got = analytic.measure_x0_error(model, FULL, Parameterization("x0", "residual", 1.0, 0.05), cond, volume, noise, grid)
    np.testing.assert_allclose(got, gamma(FULL.alphas_cumprod[grid]), rtol=0.03)


@pytest.mark.parametrize("v", [1e-4, 1e-2, 1e-1])
def test_table_interpolates_onto_a_respaced_schedule(v):
    grid = analytic.error_grid(FULL)
    exact = lambda abar: v * (1 - abar) * 0.3 / (abar * v + (1 - abar) * 0.3)  # noqa: E731
    table = {"t": grid, "mse": exact(FULL.alphas_cumprod[grid]).tolist()}
    np.testing.assert_allclose(analytic.x0_var_on(FULL, FULL, table)[grid], table["mse"], rtol=1e-9)
    np.testing.assert_allclose(analytic.x0_var_on(FULL, FULL, table), exact(FULL.alphas_cumprod), rtol=0.035)
    few = FULL.respace(spaced_timesteps(1000, 50, 999))
    np.testing.assert_allclose(analytic.x0_var_on(FULL, few, table), exact(few.alphas_cumprod), rtol=0.035)
    # an error above its bound (worse than x_t / sqrt(abar_t)) is clipped to it
    high = analytic.x0_var_on(FULL, FULL, {"t": [0, 999], "mse": [1.0, 1e9]})
    np.testing.assert_allclose(high, analytic.bound(FULL, np.arange(1000)))
    for bad in ({"t": [5], "mse": [1.0]}, {"t": [9, 3], "mse": [1.0, 1.0]}, {"t": [0, 1000], "mse": [1, 1]}):
        with pytest.raises(ValueError, match="x0_mse table"):
            analytic.x0_var_on(FULL, FULL, bad)
