"""The schedules and the Gaussian algebra of the DDPM against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrisr.diffusion import schedule as S
from mrisr.diffusion.sampler import ancestral_step, ddim_step


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_alphas_cumprod_matches_betas(name):
    sched = S.make_schedule(name, 1000, 0.3)
    abar = sched.alphas_cumprod
    assert abar.shape == (1000,)
    assert np.all(np.diff(abar) <= 0), "abar_t must not increase"
    assert 0 < abar[0] <= 1
    unclipped = sched.betas < 0.999
    reference = S.alphas_cumprod_cosine(1000) if name == "cosine" else S.alphas_cumprod_seed(1000)
    # where no beta was clipped, prod(1 - beta) reproduces the defining abar
    first_clipped = int(np.argmin(unclipped)) if not unclipped.all() else 1000
    np.testing.assert_allclose(abar[:first_clipped], reference[:first_clipped], rtol=1e-10)


def test_cosine_closed_form():
    T, s = 1000, 0.008
    f = lambda t: math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2  # noqa: E731
    abar = S.alphas_cumprod_cosine(T)
    for t in (1, 10, 250, 500, 900):
        assert abar[t - 1] == pytest.approx(f(t) / f(0), rel=1e-12)


def test_seed_closed_form_and_collapse():
    T = 1000
    abar = S.alphas_cumprod_seed(T)
    for t in (1, 5, 50):
        expected = math.prod(math.cos(math.pi * k / (2 * T)) ** 2 for k in range(1, t + 1))
        assert abar[t - 1] == pytest.approx(expected, rel=1e-12)
    # the seed's literal product has lost its signal long before T (the docstring's figure)
    assert abar[202] < 1e-3 < abar[201]
    cos = S.alphas_cumprod_cosine(T)
    assert cos[978] > 1e-3 > cos[979]


def test_unknown_schedule_names_the_allowed_ones():
    with pytest.raises(ValueError, match="cosine, seed"):
        S.make_schedule("linear")


@pytest.mark.parametrize("noise_var", [1.0, 0.3])
@pytest.mark.parametrize("t", [0, 100, 600, 999])
def test_q_sample_marginal_by_monte_carlo(noise_var, t):
    sched = S.make_schedule("cosine", 1000, noise_var)
    n = 200_000
    gen = torch.Generator().manual_seed(1234)
    x0 = torch.full((n, 1), 0.7)
    noise = torch.randn((n, 1), generator=gen)
    xt = S.q_sample(sched, x0, torch.full((n,), t, dtype=torch.long), noise).double()
    abar = sched.alphas_cumprod[t]
    mean, var = math.sqrt(abar) * 0.7, (1 - abar) * noise_var
    # 5 standard errors of the mean and of the variance estimate
    assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("noise_var", [1.0, 0.3])
@pytest.mark.parametrize("t", [1, 10, 500, 998])
def test_posterior_against_direct_gaussian_conditioning(noise_var, t):
    """q(x_{t-1} | x_t, x0) from the joint Gaussian of (x_{t-1}, x_t) given x0."""
    sched = S.make_schedule("cosine", 1000, noise_var)
    abar_prev = sched.alphas_cumprod[t - 1]
    alpha, beta = sched.alphas[t], sched.betas[t]
    x0, xt = 0.4, -0.3
    m_prev, v_prev = math.sqrt(abar_prev) * x0, noise_var * (1 - abar_prev)
    cov = math.sqrt(alpha) * v_prev  # Cov(x_{t-1}, x_t)
    v_t = alpha * v_prev + noise_var * beta  # Var(x_t)
    mean_direct = m_prev + cov / v_t * (xt - math.sqrt(alpha) * m_prev)
    var_direct = v_prev - cov**2 / v_t
    mean, var = S.posterior_mean_variance(
        sched, torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t])
    )
    assert mean.item() == pytest.approx(mean_direct, rel=1e-5, abs=1e-6)
    assert var.item() == pytest.approx(var_direct, rel=1e-5, abs=1e-9)


def test_posterior_at_first_step_returns_x0():
    sched = S.make_schedule("cosine", 1000, 0.3)
    mean, var = S.posterior_mean_variance(sched, torch.tensor([[0.25]]), torch.tensor([[3.0]]), torch.tensor([0]))
    assert mean.item() == pytest.approx(0.25, abs=1e-6)
    assert var.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("t", [0, 300, 999])
def test_parameterisations_invert(t):
    sched = S.make_schedule("cosine", 1000, 0.3)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((2, 1, 4, 4), generator=gen), torch.randn((2, 1, 4, 4), generator=gen)
    tt = torch.full((2,), t, dtype=torch.long)
    xt = S.q_sample(sched, x0, tt, eps)
    if t < 999:  # at abar_T ~ 0, x0 from eps is ill-conditioned by construction
        torch.testing.assert_close(S.predict_x0_from_eps(sched, xt, tt, eps), x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(S.predict_eps_from_x0(sched, xt, tt, x0), eps, rtol=1e-3, atol=1e-3)
    v = S.v_target(sched, x0, tt, eps)
    torch.testing.assert_close(S.predict_x0_from_v(sched, xt, tt, v), x0, rtol=1e-4, atol=1e-4)


def test_respace_keeps_marginals_and_timestep_map():
    sched = S.make_schedule("cosine", 1000, 0.3)
    kept = S.spaced_timesteps(1000, 20)
    assert len(kept) == 20 and kept[-1] == 999 and kept[0] == 0
    small = sched.respace(kept)
    np.testing.assert_allclose(small.alphas_cumprod, sched.alphas_cumprod[kept], rtol=1e-8)
    np.testing.assert_array_equal(small.timestep_map, kept)
    assert small.noise_var == 0.3
    again = sched.respace(range(1000))
    np.testing.assert_allclose(again.betas, sched.betas, rtol=1e-10)


def test_ddim_with_eta_one_is_ancestral_sampling():
    """DDIM's eta = 1 step has the posterior's mean and variance (Song et al. 2021, sec. 4.1)."""
    sched = S.make_schedule("cosine", 1000, 0.3).respace(S.spaced_timesteps(1000, 25))
    x0 = torch.randn((1, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    xt = torch.randn((1, 1, 6, 6), generator=torch.Generator().manual_seed(2))
    for i in (24, 12, 3, 1):
        a = ancestral_step(sched, x0, xt, i, torch.Generator().manual_seed(5))
        b = ddim_step(sched, x0, xt, i, 1.0, torch.Generator().manual_seed(5))
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_extract_broadcasts():
    values = np.arange(10, dtype=np.float64)
    out = S.extract(values, torch.tensor([3, 7]), 5)
    assert out.shape == (2, 1, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [3.0, 7.0]


@pytest.mark.parametrize("t", [0, 20, 300, 999])
def test_edm_preconditioning_inverts_is_the_gaussian_posterior_mean_and_has_unit_targets(t):
    """prediction edm (Karras et al. 2022, Table 1) in the VP units of this schedule.

    For x0 ~ N(0, sd^2): the target F has unit variance at every t, a zero
    output gives E[x0 | x_t] = sqrt(abar) sd^2 / (abar sd^2 + (1 - abar) s^2) x_t,
    and the target maps back to x0 exactly.
    """
    from mrisr.diffusion.parameterization import Parameterization

    sched, sd = S.make_schedule("cosine", 1000, 0.3), 0.047
    gen = torch.Generator().manual_seed(3)
    x0, eps = sd * torch.randn((4, 1, 32, 32, 32), generator=gen), torch.randn((4, 1, 32, 32, 32), generator=gen)
    tt = torch.full((4,), t, dtype=torch.long)
    xt = S.q_sample(sched, x0, tt, eps)
    edm = Parameterization("edm", "residual", 1.0, sd)
    target = edm.regression_target(sched, x0, tt, eps)
    torch.testing.assert_close(edm.output_to_x0(sched, xt, tt, target), x0, rtol=1e-4, atol=1e-5)
    assert float(target.var()) == pytest.approx(1.0, rel=0.02)
    abar = float(sched.alphas_cumprod[t])
    mmse = math.sqrt(abar) * sd**2 / (abar * sd**2 + (1 - abar) * 0.3) * xt
    torch.testing.assert_close(edm.output_to_x0(sched, xt, tt, torch.zeros_like(xt)), mmse, rtol=1e-4, atol=1e-7)
