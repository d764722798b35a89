"""Training a stage, its checkpoint, and cascaded inference from checkpoints."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

from conftest import synthetic_volumes as _volumes
from conftest import TINY_CONFIG
from mrisr.diffusion.cascade import stage_grids, stage_pair, total_factor
from mrisr.config import ConfigError, SamplingOptions
from mrisr.inference import CheckpointError, load_stage, super_resolve
from mrisr.training import StageRun, train_stage
from mrisr.training.refine import train_predict_and_refine


@pytest.fixture(scope="module")
def config():
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    return cfg


@pytest.fixture(scope="module")
def residual_config(config):
    """The tiny config with the diffusion model on the residual over the spline (no predictor, so the estimate
    is the diffusion's posterior mean): for what the training loop and sampler do whatever the residual's base."""
    return {**config, "diffusion": {**config["diffusion"], "target": "residual"},
            "sampling": {**config["sampling"], "estimate": "posterior_mean"}}




def test_stage_grids_and_pairs():
    assert total_factor([2, 3]) == (6, 6, 6)
    grids = stage_grids([2, 3])
    assert [(g.input_factor, g.output_factor) for g in grids] == [((6,) * 3, (3,) * 3), ((3,) * 3, (1,) * 3)]
    hr, mask = _volumes(0, (12, 12, 12))
    from mrisr.data.degrade import downsample

    lr = downsample(hr, 6)
    first = stage_pair(hr, lr, mask, [2, 3], 0)
    assert first.cond.shape == first.target.shape == first.mask.shape == (4, 4, 4)
    second = stage_pair(hr, lr, mask, [2, 3], 1)
    assert second.cond.shape == second.target.shape == (12, 12, 12)
    np.testing.assert_array_equal(second.target, hr)
    with pytest.raises(ValueError, match="integers >= 2"):
        total_factor([2, 1])
    with pytest.raises(ValueError, match="one >= 2"):
        total_factor([[1, 1, 1]])


def test_per_axis_stage_grids_and_pairs_follow_each_axis():
    """A thick-slice cascade [[1, 1, 2], [1, 2, 2]]: grids multiply axis by axis; pairs land on each stage's grid."""
    from mrisr.data.degrade import downsample

    assert total_factor([[1, 1, 2], [1, 2, 2]]) == (1, 2, 4)
    grids = stage_grids([[1, 1, 2], [1, 2, 2]])
    assert [(g.factor, g.input_factor, g.output_factor) for g in grids] == [
        ((1, 1, 2), (1, 2, 4), (1, 2, 2)), ((1, 2, 2), (1, 2, 2), (1, 1, 1))]
    hr, mask = _volumes(0, (8, 12, 16))
    lr = downsample(hr, (1, 2, 4), method="slice")
    first = stage_pair(hr, lr, mask, [[1, 1, 2], [1, 2, 2]], 0, method="slice")
    assert first.cond.shape == first.target.shape == first.mask.shape == (8, 6, 8)
    second = stage_pair(hr, lr, mask, [[1, 1, 2], [1, 2, 2]], 1, method="slice")
    np.testing.assert_array_equal(second.target, hr)
    iso = stage_pair(hr[:8, :8, :8], downsample(hr[:8, :8, :8], 2), mask[:8, :8, :8], [2], 0)
    same = stage_pair(hr[:8, :8, :8], downsample(hr[:8, :8, :8], 2), mask[:8, :8, :8], [[2, 2, 2]], 0)
    for a, b in zip((iso.cond, iso.target, iso.mask), (same.cond, same.target, same.mask)):
        np.testing.assert_array_equal(a, b)  # isotropic as a three-vector: the same to the last digit


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, config):
    from mrisr.data.degrade import downsample

    out = tmp_path_factory.mktemp("ckpt")
    paths = []
    for stage in range(2):
        pairs = []
        for seed in range(3):
            hr, mask = _volumes(seed)
            pairs.append(stage_pair(hr, downsample(hr, 4), mask, [2, 2], stage))
        ckpt = train_predict_and_refine(pairs[:2], pairs[2:], config, stage, out / f"stage{stage}", log=lambda m: None)
        log = out / f"stage{stage}" / "train_log.tsv"
        lines = log.read_text().splitlines()
        assert lines[0].split("\t") == ["step", "train_loss", "val_loss", "lr", "seconds", "parameters", "peak_rss_mb",
                                         "data_wait_s"]
        assert len(lines) == 1 + 2  # val_every 3 over 6 steps
        paths.append(ckpt)
    return paths


def test_checkpoint_contents_load_with_weights_only(checkpoints, config):
    payload = torch.load(checkpoints[1], weights_only=True)
    assert payload["stage"] == 1 and payload["step"] == config["train"]["steps"]
    assert {"model", "ema", "optimizer", "config", "mrisr_version"} <= set(payload)
    assert payload["config"]["diffusion"]["noise_var"] == 0.3


def test_cascade_inference_shapes_and_determinism(checkpoints, config):
    hr, _ = _volumes(5)
    from mrisr.data.degrade import downsample

    lr = downsample(hr, 4)
    sampling = SamplingOptions.from_mapping({**config["sampling"], "n_samples": 1, "seed": 1})
    outs = super_resolve(lr, checkpoints, sampling, device="cpu", log=lambda m: None)
    assert [o.mean.shape for o in outs] == [(8, 8, 8), (16, 16, 16)]
    assert all(o.mean.min() >= 0 and o.mean.max() <= 1 and o.sd is None for o in outs)
    again = super_resolve(lr, checkpoints, sampling, device="cpu", log=lambda m: None)
    np.testing.assert_array_equal(outs[-1].mean, again[-1].mean)


def test_several_samples_give_mean_and_sd_and_truncation_starts_from_the_condition(checkpoints, config):
    from mrisr.data.degrade import downsample

    hr, _ = _volumes(6)
    lr = downsample(hr, 4)
    sampling = SamplingOptions.from_mapping({**config["sampling"], "n_samples": 3, "eta": 1.0, "method": "ddim",
                                             "seed": 2})
    outs = super_resolve(lr, checkpoints, sampling, device="cpu", log=lambda m: None)
    assert outs[-1].sd is not None and outs[-1].sd.shape == (16, 16, 16) and outs[-1].sd.max() > 0


def test_truncated_sampling_walks_only_the_low_noise_steps(config):
    from mrisr.diffusion.sampler import start_from
    from mrisr.diffusion.schedule import sampling_schedule

    options = SamplingOptions.from_mapping({"method": "ddim", "steps": 4, "start_t": 200, "estimate": "sample_mean"})
    sched = sampling_schedule(config["diffusion"], options)
    assert sched.timestep_map.tolist() == [0, 66, 133, 199]
    ancestral = SamplingOptions.from_mapping({"method": "ancestral", "steps": 1000, "n_samples": 2})
    assert sampling_schedule(config["diffusion"], ancestral).num_timesteps == 1000
    # x_t at the truncated start is the condition plus noise of variance (1 - abar) * noise_var
    x0 = torch.zeros(1, 1, 32, 32, 32)
    xt = start_from(sched, x0, torch.Generator().manual_seed(0))
    expected_sd = float(np.sqrt((1 - sched.alphas_cumprod[-1]) * 0.3))
    assert float(xt.std()) == pytest.approx(expected_sd, rel=0.02)


def test_data_consistency_reproduces_the_lr_volume():
    from mrisr.data.degrade import downsample
    from mrisr.inference import data_consistency

    hr, _ = _volumes(7)
    lr = downsample(hr, 2)
    guess = np.full_like(hr, hr.mean())
    fixed = data_consistency(guess, lr, 2, iterations=10)
    before = np.abs(downsample(guess, 2) - lr).mean()
    after = np.abs(downsample(fixed, 2) - lr).mean()
    assert after < 0.05 * before


def test_flip_augmentation_mirrors_condition_and_target_alike():
    from mrisr.diffusion.cascade import StagePair
    from mrisr.inference import FLIPS
    from mrisr.training import MemoryVolume, PatchSampler

    # Values that increase in C order: exactly one of the 8 flips restores that order in a patch.
    cond = np.arange(1, 16 ** 3 + 1, dtype=np.float32).reshape(16, 16, 16)
    mask = np.zeros(cond.shape, bool)
    mask[4:12, 4:12, 4:12] = True  # centres whose 8^3 patches lie inside the volume
    volume = MemoryVolume(StagePair(cond=cond, target=-cond, mask=mask))
    c, t = PatchSampler([volume], 8, seed=0, flip=True).batch(0, range(64))
    np.testing.assert_array_equal(t, -c)  # condition and target mirrored alike
    seen = []
    for patch in c[:, 0]:
        ordered = np.sort(patch.ravel()).reshape(patch.shape)
        seen += [axes for axes in FLIPS if np.array_equal(np.flip(patch, axes), ordered)]
    assert len(seen) == 64 and set(seen) == set(FLIPS)
    c, _ = PatchSampler([volume], 8, seed=0).batch(0, range(16))
    assert all(np.all(np.diff(p.ravel()) > 0) for p in c[:, 0])  # flip off: patches as stored


def test_posterior_mean_is_the_first_x0_prediction_and_flips_are_undone(checkpoints, config):
    """The posterior-mean estimate is the x0 prediction from x_T; flip_ensemble mirrors back."""
    from mrisr.inference import load_cascade, super_resolve_stage

    stage = load_cascade(checkpoints, torch.device("cpu"))[1]
    volume, _ = _volumes(9)  # 16^3 -> 32^3: no padding, so mirroring commutes with it
    base = {**config["sampling"], "patch_size": 32, "eta": 0.0, "method": "ddim", "n_samples": 1,
            "estimate": "sample_mean"}

    def run(volume, seed, **kw):
        options = SamplingOptions.from_mapping({**base, **kw})
        return super_resolve_stage(stage, volume, options, torch.Generator().manual_seed(seed))

    # With eta = 0 the only noise is x_T, so the first step's x0 of a 3-step run
    # is a 1-step run's output (DDIM's last step returns x0).
    three = run(volume, 0, steps=3, n_samples=2, estimate="posterior_mean")
    one = run(volume, 0, steps=1, n_samples=2)
    np.testing.assert_allclose(three.mean, one.mean, atol=1e-6)
    assert not np.allclose(run(volume, 0, steps=3, n_samples=2).mean, three.mean, atol=1e-4)
    np.testing.assert_allclose(three.sd, run(volume, 0, steps=3, n_samples=2).sd, atol=1e-6)
    # Sample 2 of a flip ensemble is a sample of the volume mirrored along axis 0, mirrored back.
    ensemble = run(volume, 0, steps=1, n_samples=2, flip_ensemble=True)
    gen = torch.Generator().manual_seed(0)
    one_step = SamplingOptions.from_mapping({**base, "steps": 1})
    first = super_resolve_stage(stage, volume, one_step, gen).mean
    second = super_resolve_stage(stage, np.flip(volume, 0).copy(), one_step, gen).mean
    np.testing.assert_allclose(ensemble.mean, (first + np.flip(second, 0)) / 2, atol=1e-6)
    # One sample: only the first step matters, and it is all that runs.
    np.testing.assert_array_equal(run(volume, 3, steps=1, estimate="posterior_mean").mean,
                                  run(volume, 3, steps=4, eta=1.0, estimate="posterior_mean").mean)
    with pytest.raises(ConfigError, match="start_t: null"):
        run(volume, 0, steps=2, start_t=100, estimate="posterior_mean")


def test_the_log_names_the_steps_that_run(checkpoints, config):
    """Posterior mean with one sample runs one reverse step per stage, and says so."""
    lines, steps = [], []
    lr = np.random.default_rng(0).random((4, 4, 4), dtype=np.float32)
    sampling = SamplingOptions.from_mapping({**config["sampling"], "steps": 5, "n_samples": 1,
                                             "estimate": "posterior_mean", "flip_ensemble": False})
    super_resolve(lr, checkpoints, sampling, device="cpu", log=lines.append,
                  progress=lambda stage, n_stages, step, n_steps: steps.append((stage, n_steps)))
    assert len(lines) == 2 and all("ddim 1 step(s), 1 sample(s), posterior_mean, posterior variance on cpu" in line for line in lines)
    assert steps == [(0, 1), (1, 1)]
    lines.clear()
    super_resolve(lr, checkpoints, sampling.with_values(n_samples=2, flip_ensemble=True), device="cpu",
                  log=lines.append)
    assert "ddim 5 step(s), 2 sample(s), posterior_mean over flips, posterior variance on cpu" in lines[0]


def test_checkpoint_holds_the_x0_error_and_analytic_variance_uses_it(checkpoints, config, tmp_path):
    """Training stores Gamma_t on its grid; analytic sampling needs it and adds spread."""
    from mrisr.diffusion import analytic
    from mrisr.diffusion.schedule import full_schedule
    from mrisr.inference import CheckpointError, load_stage, super_resolve_stage

    stage = load_stage(checkpoints[1], torch.device("cpu"))
    full = full_schedule(stage.config["diffusion"])
    table = stage.x0_mse
    assert table["t"] == analytic.error_grid(full) and len(table["mse"]) == len(table["t"])
    mse = np.asarray(table["mse"])
    # (a 6-step model is far from the bound near t = 0, which x0_var_on clips to)
    assert np.all(np.isfinite(mse)) and np.all(mse > 0) and mse[-1] > mse[0]
    volume, _ = _volumes(9)
    base = {**config["sampling"], "patch_size": 32, "n_samples": 3, "steps": 3, "eta": 1.0}

    def spread(**kw):
        options = SamplingOptions.from_mapping({**base, **kw})
        return super_resolve_stage(stage, volume, options, torch.Generator().manual_seed(0)).sd.mean()

    assert spread(variance="analytic") > spread(variance="posterior")
    payload = torch.load(checkpoints[1], weights_only=True)
    del payload["x0_mse"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    with pytest.raises(CheckpointError, match="old.pt: holds no x0 error table"):
        super_resolve_stage(load_stage(old, torch.device("cpu")), volume,
                            SamplingOptions.from_mapping({**base, "variance": "analytic"}), torch.Generator())
    with pytest.raises(ConfigError, match="sampling.variance: 'exact' is not one of"):
        SamplingOptions.from_mapping({**base, "variance": "exact"})


def test_checkpoints_out_of_order_are_refused(checkpoints, config):
    lr = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(CheckpointError, match="holds stage 1, expected stage 0"):
        super_resolve(lr, checkpoints[::-1], SamplingOptions.from_mapping(config["sampling"]), device="cpu",
                      log=lambda m: None)


def test_corrupt_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoints[0].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_stage(bad, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_stage(tmp_path / "none.pt", torch.device("cpu"))


def test_triplanar_variant_trains_and_samples(tmp_path, residual_config):
    from mrisr.data.degrade import downsample

    cfg = {**residual_config, "model": {**residual_config["model"], "variant": "triplanar2d"}, "cascade": {"factors": [2]},
           "train": {**residual_config["train"], "steps": 2, "val_every": 2}}
    pairs = []
    for seed in range(2):
        hr, mask = _volumes(seed)
        pairs.append(stage_pair(hr, downsample(hr, 2), mask, [2], 0))
    ckpt = tmp_path / "tri.pt"
    train_stage(pairs[:1], pairs[1:], StageRun(cfg, 0, ckpt, tmp_path / "log.tsv"), log=lambda m: None)
    stage = load_stage(ckpt, torch.device("cpu"))
    assert type(stage.model).__name__ == "TriPlanarUNet"
    out = super_resolve(downsample(_volumes(3)[0], 2), [ckpt], SamplingOptions.from_mapping(cfg["sampling"]), device="cpu",
                        log=lambda m: None)
    assert out[-1].mean.shape == (16, 16, 16)


def test_edm_prediction_trains_passes_a_clean_input_through_and_samples(tmp_path, residual_config, checkpoints):
    """prediction edm: at t = 0 the x0 error is near that of x_t / sqrt(abar) from the first step,
    where the x0-predicting network of the same training is far from it."""
    from mrisr.data.degrade import downsample
    from mrisr.diffusion import analytic
    from mrisr.diffusion.schedule import full_schedule

    cfg = {**residual_config, "cascade": {"factors": [2]}, "diffusion": {**residual_config["diffusion"], "prediction": "edm"}}
    pairs = []
    for seed in range(3):
        hr, mask = _volumes(seed)
        pairs.append(stage_pair(hr, downsample(hr, 2), mask, [2], 0))
    ckpt = tmp_path / "edm.pt"
    result = train_stage(pairs[:2], pairs[2:], StageRun(cfg, 0, ckpt, tmp_path / "log.tsv"), log=lambda m: None)
    assert np.isfinite(result.final_val_loss)
    log_rows = list(csv.DictReader(open(tmp_path / "log.tsv"), delimiter="\t"))
    assert 100 < float(log_rows[-1]["peak_rss_mb"]) < 100_000  # the process's VmHWM, MB
    assert 0 <= float(log_rows[-1]["data_wait_s"]) <= float(log_rows[-1]["seconds"])
    stage = load_stage(ckpt, torch.device("cpu"))
    bound0 = float(analytic.bound(full_schedule(cfg["diffusion"]), np.array([0]))[0])
    assert stage.x0_mse["mse"][0] < 10 * bound0 < load_stage(checkpoints[0], torch.device("cpu")).x0_mse["mse"][0]
    out = super_resolve(downsample(_volumes(3)[0], 2), [ckpt], SamplingOptions.from_mapping(cfg["sampling"]), device="cpu",
                        log=lambda m: None)
    assert out[-1].mean.shape == (16, 16, 16) and np.all(np.isfinite(out[-1].mean))


def test_residual_scale_round_trips_and_scales_the_loss_by_its_square(config):
    from mrisr.diffusion.nets import unet_from_config
    from mrisr.diffusion.parameterization import Parameterization
    from mrisr.diffusion.schedule import make_schedule
    from mrisr.training import diffusion_loss

    gen = torch.Generator().manual_seed(0)
    hr, cond = torch.rand(2, 1, 1, 8, 8, 8, generator=gen)
    scaled = Parameterization.from_diffusion({"prediction": "x0", "target": "residual", "residual_scale": 10.0})
    x0 = scaled.to_diffusion_space(hr, cond)
    torch.testing.assert_close(x0, 10.0 * (hr - cond))
    torch.testing.assert_close(scaled.from_diffusion_space(x0, cond), hr)
    assert scaled.x0_range() == (-10.0, 10.0)
    assert Parameterization.from_diffusion({"target": "image", "residual_scale": 10.0}).residual_scale == 1.0
    unscaled = Parameterization.from_diffusion({"prediction": "x0", "target": "residual"})
    assert unscaled.residual_scale == 1.0 and unscaled.sigma_data == 0.05  # the schema's defaults
    # A fresh network outputs exactly 0 (zero-initialised output layer), so the x0 loss is mean(x0^2).
    model = unet_from_config(config["model"])
    schedule = make_schedule("cosine", 1000, 0.3)
    t, noise = torch.tensor([500]), torch.randn(1, 1, 8, 8, 8, generator=gen)
    with torch.no_grad():
        losses = [float(diffusion_loss(model, schedule, p, cond, hr, t, noise)) for p in (unscaled, scaled)]
    assert losses[0] == pytest.approx(float(((hr - cond) ** 2).mean()), rel=1e-5)
    assert losses[1] == pytest.approx(100.0 * losses[0], rel=1e-5)


def test_the_regression_baseline_learns_x0_from_the_condition_and_samples_in_one_pass(tmp_path, residual_config):
    """train.objective: regression: the MSE loss on x0 from the condition alone; inference is one network
    pass (x_t = 0, t = 0) per mirroring, deterministic, with no sd map."""
    from mrisr.data.degrade import downsample, upsample
    from mrisr.inference import load_stage, super_resolve

    cfg = {**residual_config, "cascade": {"factors": [2]}, "train": {**residual_config["train"], "objective": "regression", "steps": 30},
           "device": "cpu"}
    pairs = []
    for seed in range(3):
        hr, mask = _volumes(seed)
        pairs.append(stage_pair(hr, downsample(hr, 2), mask, [2], 0))
    ckpt = tmp_path / "regression.pt"
    log_rows = []
    train_stage(pairs[:2], pairs[2:], StageRun(cfg, 0, ckpt, tmp_path / "log.tsv"), log=log_rows.append)
    losses = [float(r.split("train ")[1].split()[0]) for r in log_rows if r.startswith("step ")]
    assert losses[-1] < losses[0], losses  # it learns
    stage = load_stage(ckpt, torch.device("cpu"))
    assert stage.x0_mse is None  # no reverse process, no error by timestep
    lr = downsample(_volumes(3)[0], 2)
    options = SamplingOptions.from_mapping({**cfg["sampling"], "n_samples": 2, "flip_ensemble": False})
    out = super_resolve(lr, [ckpt], options, device="cpu", log=lambda m: None)[-1]
    assert out.sd is None
    cond = torch.from_numpy(upsample(lr, 2))[None, None]
    with torch.no_grad():
        x0 = stage.model(torch.zeros_like(cond), cond, torch.zeros(1, dtype=torch.long))
    expected = np.clip(stage.param.from_diffusion_space(x0, cond)[0, 0].numpy(), 0, 1)
    np.testing.assert_allclose(out.mean, expected, atol=1e-5)


def test_t_end_fraction_moves_that_share_of_rows_to_t_T_and_leaves_the_default_stream_alone(residual_config):
    """train.t_end_fraction: a share of each batch's timesteps at T-1, the rest uniform; 0 draws exactly the
    uniform stream DDPM's eq. 14 draws (so the default model is unchanged)."""
    from mrisr.distributed import World
    from mrisr.training.loop import TrainLoop

    from mrisr.data.degrade import downsample

    hr, mask = _volumes(0)
    pair = stage_pair(hr, downsample(hr, 2), mask, [2], 0)

    def loop(share: float) -> TrainLoop:
        cfg = {**residual_config, "cascade": {"factors": [2]}, "device": "cpu",
               "train": {**residual_config["train"], "t_end_fraction": share}}
        return TrainLoop([pair], [pair], StageRun(cfg, 0, "unused.pt", "unused.tsv"), World())

    T = int(residual_config["diffusion"]["num_timesteps"])
    uniform = loop(0.0)
    seed = int(residual_config["train"]["seed"])
    np.testing.assert_array_equal(uniform.draw_t(64), np.random.default_rng(seed).integers(0, T, size=64))
    assert (loop(1.0).draw_t(64) == T - 1).all()
    half = loop(0.5).draw_t(1000)
    at_end = (half == T - 1).mean()
    assert 0.45 < at_end < 0.55, at_end
    rest = half[half != T - 1]
    assert rest.min() < T // 10 and rest.max() > T - T // 10  # the others still span 0..T-1


def test_conditioning_augmentation_applies_to_stages_after_the_first_only(residual_config):
    """Stage 0 conditions on the real LR volume: train.cond_augment leaves its patches alone; intensity
    augmentation (train.intensity_augment) applies to every stage."""
    from mrisr.data.degrade import downsample
    from mrisr.distributed import World
    from mrisr.training.loop import TrainLoop
    from mrisr.training.patches import CondAugment, IntensityAugment

    hr, mask = _volumes(0)
    cfg = {**residual_config, "cascade": {"factors": [2, 2]}, "device": "cpu",
           "train": {**residual_config["train"], "cond_augment": {"blur": 1.5, "noise": 0.02},
                     "intensity_augment": {"gamma": 1.25}}}
    pairs = [stage_pair(hr, downsample(hr, 4), mask, [2, 2], k) for k in (0, 1)]
    loops = [TrainLoop([pairs[k]], [pairs[k]], StageRun(cfg, k, "unused.pt", "unused.tsv"), World()) for k in (0, 1)]
    assert loops[0].sampler.augment is None
    assert loops[1].sampler.augment == CondAugment(blur=1.5, noise=0.02)
    assert [loop.sampler.intensity for loop in loops] == [IntensityAugment(gamma=1.25)] * 2
