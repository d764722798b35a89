"""Predict, then refine: the predictor g, its output over a volume, and the diffusion model on what it misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONFIG
from conftest import synthetic_volumes as _volumes
from mrisr.config import ConfigError, SamplingOptions, check_combinations
from mrisr.data.degrade import downsample, upsample
from mrisr.diffusion.cascade import stage_pair
from mrisr.diffusion.parameterization import Parameterization
from mrisr.diffusion.predictor import (
    MIRRORINGS, ShuffleResNet, pixel_shuffle_3d, pixel_unshuffle_3d, predict_volume, predictor_output,
)
from mrisr.inference import CheckpointError, load_stage, super_resolve
from mrisr.training.loop import StageRun, predictor_loss, train_stage
from mrisr.training.patches import PatchSampler
from mrisr.training.refine import train_predict_and_refine, with_predictions


def test_voxel_shuffle_is_a_lossless_fold_onto_the_coarse_grid():
    x = torch.arange(2 * 4 * 6 * 8, dtype=torch.float32).reshape(1, 2, 4, 6, 8)
    folded = pixel_unshuffle_3d(x, 2)
    assert folded.shape == (1, 16, 2, 3, 4)
    # channel (c, a, b, d) of coarse voxel (i, j, k) is fine voxel (2i + a, 2j + b, 2k + d) of channel c
    assert folded[0, 8 * 1 + 4 * 1 + 2 * 0 + 1, 1, 2, 3] == x[0, 1, 3, 4, 7]
    torch.testing.assert_close(pixel_shuffle_3d(folded, 2), x)
    with pytest.raises(ValueError, match="not divisible"):
        pixel_unshuffle_3d(torch.zeros(1, 1, 3, 4, 4), 2)


def test_a_per_axis_voxel_shuffle_folds_each_axis_by_its_own_factor():
    x = torch.arange(3 * 4 * 8, dtype=torch.float32).reshape(1, 1, 3, 4, 8)
    folded = pixel_unshuffle_3d(x, (1, 2, 4))
    assert folded.shape == (1, 8, 3, 2, 2)
    # channel (b, d) of coarse voxel (i, j, k) is fine voxel (i, 2j + b, 4k + d)
    assert folded[0, 4 * 1 + 3, 2, 1, 1] == x[0, 0, 2, 3, 7]
    torch.testing.assert_close(pixel_shuffle_3d(folded, (1, 2, 4)), x)
    cube = torch.rand(1, 2, 4, 6, 8)
    assert torch.equal(pixel_unshuffle_3d(cube, (2, 2, 2)), pixel_unshuffle_3d(cube, 2))  # (2, 2, 2) is 2
    model = ShuffleResNet(factor=(1, 1, 4), channels=4, blocks=1)
    assert model.head.in_channels == 4 and model.divisor == (1, 1, 4)
    cond = torch.rand(1, 1, 6, 5, 8)
    torch.testing.assert_close(model(cond), cond)  # untrained: the spline, on any side the factor divides
    with pytest.raises(ValueError, match="not divisible by the factor 1x1x4"):
        model(torch.rand(1, 1, 6, 5, 6))


def test_an_untrained_predictor_is_the_spline_and_works_on_the_lr_grid():
    model = ShuffleResNet(factor=2, channels=8, blocks=2)
    cond = torch.rand(2, 1, 8, 12, 16)
    torch.testing.assert_close(model(cond), cond)  # the last layer starts at zero: g = the spline
    assert model.radius == 6 and model.head.in_channels == 8  # 2 x 2 x 2 voxels fold into 8 channels


def test_the_predictor_in_slabs_equals_one_whole_volume_pass():
    torch.manual_seed(0)
    model = ShuffleResNet(factor=2, channels=4, blocks=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    cond = torch.rand(1, 1, 44, 10, 12)
    with torch.no_grad():
        whole = model(cond)
    torch.testing.assert_close(predict_volume(model, cond, chunk=3), whole, atol=1e-5, rtol=1e-5)


def test_the_predictors_output_is_averaged_over_its_mirrorings():
    torch.manual_seed(1)
    model = ShuffleResNet(factor=2, channels=4, blocks=1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    cond = np.random.default_rng(0).random((8, 6, 10)).astype(np.float32)
    by_hand = np.zeros_like(cond)
    for axes in MIRRORINGS:
        x = torch.from_numpy(np.ascontiguousarray(np.flip(cond, axes)))[None, None]
        by_hand += np.flip(model(x).detach()[0, 0].numpy(), axes) / 8
    np.testing.assert_allclose(predictor_output(model, cond, MIRRORINGS), by_hand, atol=1e-5)
    np.testing.assert_allclose(predictor_output(model, cond, ((),)), model(torch.from_numpy(cond)[None, None])
                               .detach()[0, 0].numpy(), atol=1e-6)


def test_the_predictor_loss_counts_the_brain_only():
    model = ShuffleResNet(factor=2, channels=4, blocks=1)  # untrained: g = the spline
    cond = torch.zeros(1, 1, 4, 4, 4)
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1.0  # an error of 1 in half the patch
    mask = torch.zeros(1, 1, 4, 4, 4)
    mask[..., 2:] = 1.0  # ... outside the brain
    with torch.no_grad():
        assert float(predictor_loss(model, torch.cat([cond, mask], 1), target, "mse")) == 0.0
    mask[..., 1:] = 1.0
    with torch.no_grad():
        assert float(predictor_loss(model, torch.cat([cond, mask], 1), target, "l1")) == pytest.approx(16 / 48)


def test_patches_for_a_predictor_start_on_the_lr_grid():
    hr, mask = _volumes(0, (20, 20, 20))
    pair = stage_pair(hr, downsample(hr, 2), mask, [2], 0)
    from mrisr.training.cache import MemoryVolume

    sampler = PatchSampler([MemoryVolume(pair)], 8, seed=0, align=2)
    for step in range(20):
        pick = sampler.pick(step, 0)
        assert all((c - 4) % 2 == 0 for c in pick.centre)
    thick = PatchSampler([MemoryVolume(pair)], 8, seed=0, align=(1, 1, 4))  # a thick third axis
    centres = [thick.pick(step, 0).centre for step in range(40)]
    assert all((c[2] - 4) % 4 == 0 for c in centres)
    assert any(c[0] % 2 for c in centres) and any(c[1] % 2 for c in centres)  # in-plane corners anywhere


def test_the_diffusion_model_learns_the_residual_over_the_predictor():
    """x_0 = scale (HR - g): a predictor that is exact leaves a zero target; the network sees [spline, g]."""
    param = Parameterization.from_diffusion({"target": "predictor_residual", "residual_scale": 10.0})
    assert param.cond_channels == 2
    hr = torch.rand(1, 1, 4, 4, 4)
    spline = torch.rand(1, 1, 4, 4, 4)
    exact = torch.cat([spline, hr], 1)
    assert torch.count_nonzero(param.to_diffusion_space(hr, exact)) == 0
    off = torch.cat([spline, hr - 0.01], 1)
    torch.testing.assert_close(param.to_diffusion_space(hr, off), torch.full_like(hr, 0.1))
    torch.testing.assert_close(param.from_diffusion_space(param.to_diffusion_space(hr, off), off), hr)


def test_the_predictor_estimate_needs_a_predictor():
    with pytest.raises(ConfigError, match="predictor_residual"):
        check_combinations({"target": "residual"}, {"estimate": "predictor"})
    check_combinations({"target": "predictor_residual"}, {"estimate": "predictor"})
    assert SamplingOptions.from_mapping({"estimate": "predictor"}).steps_run == 0


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """One predict-and-refine stage (x2) trained on in-memory pairs with the tiny config."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["cascade"]["factors"] = [2]
    pairs = []
    for seed in range(3):
        hr, mask = _volumes(seed)
        pairs.append(stage_pair(hr, downsample(hr, 2), mask, [2], 0))
    out = tmp_path_factory.mktemp("refined")
    return train_predict_and_refine(pairs[:2], pairs[2:], config, 0, out, log=lambda m: None), pairs, config


def test_a_refined_stage_is_one_checkpoint_carrying_its_predictor(refined):
    checkpoint, pairs, config = refined
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["network"] == "diffusion" and payload["predictor"]["stage"] == 0
    predictor = torch.load(checkpoint.parent / "predictor.pt", weights_only=True)
    assert predictor["network"] == "predictor" and "x0_mse" not in predictor
    for k, v in predictor["ema"].items():
        torch.testing.assert_close(payload["predictor"]["ema"][k], v)
    stage = load_stage(checkpoint, torch.device("cpu"))
    assert stage.predictor is not None and stage.param.cond_channels == 2
    with pytest.raises(CheckpointError, match="predictor alone"):
        load_stage(checkpoint.parent / "predictor.pt", torch.device("cpu"))


def test_the_estimate_is_g_and_a_sample_is_g_plus_a_sampled_residual(refined):
    checkpoint, pairs, config = refined
    hr, _ = _volumes(5)
    lr = downsample(hr, 2)
    stage = load_stage(checkpoint, torch.device("cpu"))
    g = np.clip(predictor_output(stage.predictor, upsample(lr, 2), stage.predictor_flips), 0, 1)
    options = SamplingOptions.from_mapping({**config["sampling"], "estimate": "predictor", "n_samples": 1})
    (out,) = super_resolve(lr, [checkpoint], options, device="cpu", log=lambda m: None)
    np.testing.assert_array_equal(out.mean, g)  # no sample drawn: the estimate is g alone
    assert out.sd is None and out.sample is None
    options = options.with_values(n_samples=2)
    (out,) = super_resolve(lr, [checkpoint], options, device="cpu", log=lambda m: None)
    np.testing.assert_array_equal(out.mean, g)
    np.testing.assert_array_equal(out.predictor, g)
    assert out.sd is not None and out.sample is not None and not np.array_equal(out.sample, g)
    with_pm = super_resolve(lr, [checkpoint], options.with_values(estimate="posterior_mean"), device="cpu",
                            log=lambda m: None)[0]
    assert not np.array_equal(with_pm.mean, g)  # g plus the diffusion's estimate of the residual


def test_a_diffusion_model_of_this_design_refuses_pairs_without_predictions(refined):
    checkpoint, pairs, config = refined
    run = StageRun(config, 0, str(checkpoint.parent / "again.pt"), str(checkpoint.parent / "again.tsv"))
    with pytest.raises(ValueError, match="predictor's output"):
        train_stage(pairs[:2], pairs[2:], run, log=lambda m: None)
    again = with_predictions(pairs[:1], checkpoint.parent / "predictor.pt")[0]
    assert again.pred.shape == again.cond.shape


def _refine(config: dict, factor, method: str, out, shape=(16, 16, 16)):
    """A predict-and-refine stage trained on three in-memory pairs degraded by ``factor`` with ``method``."""
    config = {**config, "cascade": {**config["cascade"], "factors": [factor]}}
    pairs = []
    for seed in range(3):
        hr, mask = _volumes(seed, shape)
        pairs.append(stage_pair(hr, downsample(hr, factor, method=method), mask, [factor], 0, method=method))
    return train_predict_and_refine(pairs[:2], pairs[2:], config, 0, out, log=lambda m: None), config


def test_an_isotropic_factor_given_per_axis_trains_and_samples_the_same_model_to_the_last_digit(refined, tmp_path):
    checkpoint, _, config = refined
    again, _ = _refine(config, [2, 2, 2], "spline", tmp_path)
    for name in ("ema", "predictor"):
        ours, theirs = torch.load(checkpoint, weights_only=True)[name], torch.load(again, weights_only=True)[name]
        ours, theirs = (ours["ema"], theirs["ema"]) if name == "predictor" else (ours, theirs)
        for k, v in ours.items():
            assert torch.equal(theirs[k], v), k
    lr = downsample(_volumes(5)[0], 2)
    options = SamplingOptions.from_mapping({**config["sampling"], "estimate": "posterior_mean", "n_samples": 2})
    (a,), (b,) = (super_resolve(lr, [c], options, device="cpu", log=lambda m: None) for c in (checkpoint, again))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.sd, b.sd)


def test_a_thick_slice_stage_trains_and_super_resolves_the_thick_axis_alone(tmp_path):
    """x4 along the third axis from slice-profile LRs: the output lands on the HR grid, g on its own grid."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    checkpoint, config = _refine(config, [1, 1, 4], "slice", tmp_path, shape=(12, 16, 16))
    stage = load_stage(checkpoint, torch.device("cpu"))
    assert stage.factor == (1, 1, 4) and stage.predictor.factor == (1, 1, 4)
    lr = downsample(_volumes(5, (12, 16, 16))[0], (1, 1, 4), method="slice")
    assert lr.shape == (12, 16, 4)
    options = SamplingOptions.from_mapping({**config["sampling"], "estimate": "predictor", "n_samples": 2})
    (out,) = super_resolve(lr, [checkpoint], options, device="cpu", log=lambda m: None)
    assert out.mean.shape == out.sd.shape == (12, 16, 16)
    g = np.clip(predictor_output(stage.predictor, upsample(lr, (1, 1, 4)), stage.predictor_flips), 0, 1)
    np.testing.assert_array_equal(out.mean, g)
