"""The U-Net's shapes and the sampler's loop, patch blending and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrisr.diffusion.nets import UNet
from mrisr.diffusion.sampler import blend_window, patch_starts, prior_sample, sample, sliding_window
from mrisr.diffusion.schedule import make_schedule, spaced_timesteps


@pytest.mark.parametrize("spatial_dims,shape", [(2, (16, 24)), (3, (16, 16, 8))])
def test_unet_shapes(spatial_dims, shape):
    net = UNet(spatial_dims, cond_channels=1, base_channels=8, channel_mult=(1, 2), num_heads=2)
    x = torch.randn(2, 1, *shape)
    out = net(x, torch.randn(2, 1, *shape), torch.tensor([0, 999]))
    assert out.shape == x.shape
    # zero-initialised output layer: an untrained net predicts zero (the spline, for residuals)
    assert torch.count_nonzero(out) == 0


def test_unet_learns_gradient_everywhere():
    net = UNet(3, 1, base_channels=8, channel_mult=(1, 2), num_heads=2)
    torch.nn.init.normal_(net.out_conv.weight, std=0.1)
    loss = net(torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8), torch.tensor([5])).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_rejects_indivisible_shapes():
    net = UNet(3, 1, base_channels=8, channel_mult=(1, 2, 4), num_heads=2)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 8, 8, 6), torch.randn(1, 1, 8, 8, 6), torch.tensor([1]))


def test_bad_spatial_dims():
    with pytest.raises(ValueError, match="2 or 3"):
        UNet(spatial_dims=4)


@pytest.mark.parametrize("size,patch,overlap", [(50, 16, 0.5), (16, 16, 0.25), (10, 16, 0.25), (33, 8, 0.0)])
def test_patch_starts_cover(size, patch, overlap):
    starts = patch_starts(size, patch, overlap)
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + patch, size)))
        assert s + min(patch, size) <= size
    assert covered == set(range(size))


def test_sliding_window_reproduces_a_pointwise_map_without_seams():
    """Blending identical overlapping predictions must give them back exactly."""
    inputs = torch.randn(1, 2, 37, 30, 21, generator=torch.Generator().manual_seed(0))
    out = sliding_window(lambda b: 2 * b[:, :1] - b[:, 1:], inputs, patch_size=16, overlap=0.5, batch_size=3)
    torch.testing.assert_close(out, 2 * inputs[:, :1] - inputs[:, 1:], rtol=1e-5, atol=1e-5)


def test_blend_window_positive():
    w = blend_window((8, 8, 8))
    assert w.shape == (8, 8, 8) and float(w.min()) > 0 and w[4, 4, 4] == w.max()


@pytest.mark.parametrize("method, eta", [("ancestral", 0.0), ("ddim", 1.0), ("ddim", 0.0)])
def test_with_an_oracle_denoiser_every_intermediate_x_t_follows_its_closed_form_marginal(method, eta):
    """Given the true x0 at every step, each reverse step draws from (ancestral, DDIM eta = 1) or maps onto
    (DDIM eta = 0) the posterior q(x_{t-1} | x_t, x0), so x_t at every visited step is distributed as the
    forward marginal q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) noise_var): checked for mean and variance
    over 200,000 voxels, at every step, which a sampler that only returned x0 at the end would fail."""
    sched = make_schedule("cosine", 1000, 0.3).respace(spaced_timesteps(1000, 8))
    x0 = torch.linspace(-1, 1, 200_000, dtype=torch.float64).reshape(1, 1, 200, 1000)
    seen = {}

    def oracle(xt, i):
        seen[i] = xt.clone()
        return x0

    gen = torch.Generator().manual_seed(0)
    out = sample(oracle, sched, prior_sample(sched, x0.shape, gen).double(), method=method, eta=eta, generator=gen)
    assert list(seen) == list(reversed(range(8)))  # the sampler's order is explicit: T'-1 down to 0
    abar = sched.alphas_cumprod
    for i, xt in seen.items():
        residual = (xt - np.sqrt(abar[i]) * x0) / np.sqrt((1 - abar[i]) * 0.3)  # N(0, 1) under the marginal
        assert abs(float(residual.mean())) < 0.01, (i, float(residual.mean()))
        assert abs(float(residual.var()) - 1.0) < 0.02, (i, float(residual.var()))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_sampler_is_seeded():
    sched = make_schedule("cosine", 100, 0.3)
    denoise = lambda xt, i: 0.5 * xt  # noqa: E731
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample(denoise, sched, prior_sample(sched, (1, 1, 4, 4), gen), method="ancestral", generator=gen)

    a, b, c = run(3), run(3), run(4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="ancestral, ddim"):
        sample(lambda x, i: x, make_schedule("cosine", 10), torch.zeros(1, 1, 2, 2), method="euler")


def test_triplanar_slices_along_each_axis_and_fuses():
    from mrisr.diffusion.nets import TriPlanarUNet, unet_from_config

    net = TriPlanarUNet(cond_channels=1, base_channels=8, channel_mult=(1, 2), num_heads=2)
    for sub in net.nets.values():
        torch.nn.init.normal_(sub.out_conv.weight, std=0.1)
    x, cond = torch.randn(2, 1, 8, 12, 16), torch.randn(2, 1, 8, 12, 16)
    t = torch.tensor([3, 900])
    out = net(x, cond, t)
    assert out.shape == x.shape
    # the axial net alone, applied slice by slice along the last axis, reproduces its share
    axial = torch.stack([net.nets["axial"](x[..., k], cond[..., k], t) for k in range(16)], dim=-1)
    sag = torch.stack([net.nets["sagittal"](x[:, :, k], cond[:, :, k], t) for k in range(8)], dim=2)
    cor = torch.stack([net.nets["coronal"](x[:, :, :, k], cond[:, :, :, k], t) for k in range(12)], dim=3)
    torch.testing.assert_close(out, (axial + sag + cor) / 3, rtol=1e-4, atol=1e-5)
    cfg = {"variant": "triplanar2d", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
           "attention": True, "num_heads": 2}
    assert isinstance(unet_from_config(cfg), TriPlanarUNet)
    with pytest.raises(ValueError, match="unet3d, triplanar2d"):
        unet_from_config({**cfg, "variant": "vit"})
