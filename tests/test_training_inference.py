"""Training a stage, its checkpoint, and cascaded inference from checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import synthetic_volumes as _volumes
from conftest import TINY_CONFIG
from mrisr.diffusion.cascade import stage_grids, stage_pair, total_factor
from mrisr.inference import CheckpointError, load_stage, super_resolve
from mrisr.training import train_stage


@pytest.fixture(scope="module")
def config():
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    return cfg




def test_stage_grids_and_pairs():
    assert total_factor([2, 3]) == 6
    grids = stage_grids([2, 3])
    assert [(g.input_factor, g.output_factor) for g in grids] == [(6, 3), (3, 1)]
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
        ckpt, log = out / f"stage{stage}.pt", out / f"stage{stage}.tsv"
        result = train_stage(pairs[:2], pairs[2:], config, stage, ckpt, log, device="cpu", log=lambda m: None)
        assert result.steps == config["train"]["steps"] and np.isfinite(result.final_val_loss)
        lines = log.read_text().splitlines()
        assert lines[0].split("\t") == ["step", "train_loss", "val_loss", "lr", "seconds"]
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
    sampling = {**config["sampling"], "n_samples": 1}
    outs = super_resolve(lr, checkpoints, sampling, seed=1, device="cpu", log=lambda m: None)
    assert [o.mean.shape for o in outs] == [(8, 8, 8), (16, 16, 16)]
    assert all(o.mean.min() >= 0 and o.mean.max() <= 1 and o.sd is None for o in outs)
    again = super_resolve(lr, checkpoints, sampling, seed=1, device="cpu", log=lambda m: None)
    np.testing.assert_array_equal(outs[-1].mean, again[-1].mean)


def test_several_samples_give_mean_and_sd_and_truncation_starts_from_the_condition(checkpoints, config):
    from mrisr.data.degrade import downsample

    hr, _ = _volumes(6)
    lr = downsample(hr, 4)
    sampling = {**config["sampling"], "n_samples": 3, "eta": 1.0, "method": "ddim"}
    outs = super_resolve(lr, checkpoints, sampling, seed=2, device="cpu", log=lambda m: None)
    assert outs[-1].sd is not None and outs[-1].sd.shape == (16, 16, 16) and outs[-1].sd.max() > 0


def test_truncated_sampling_walks_only_the_low_noise_steps(config):
    from mrisr.diffusion.sampler import start_from
    from mrisr.inference import sampling_schedule

    sched = sampling_schedule(config, {"method": "ddim", "steps": 4, "start_t": 200})
    assert sched.timestep_map.tolist() == [0, 66, 133, 199]
    assert sampling_schedule(config, {"method": "ancestral", "steps": 1000}).num_timesteps == 1000
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
    fixed = data_consistency(guess, lr, 2, 3, iterations=10)
    before = np.abs(downsample(guess, 2) - lr).mean()
    after = np.abs(downsample(fixed, 2) - lr).mean()
    assert after < 0.05 * before


def test_checkpoints_out_of_order_are_refused(checkpoints, config):
    lr = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(CheckpointError, match="holds stage 1, expected stage 0"):
        super_resolve(lr, checkpoints[::-1], config["sampling"], device="cpu", log=lambda m: None)


def test_corrupt_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoints[0].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt: not a readable checkpoint"):
        load_stage(bad, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_stage(tmp_path / "none.pt", torch.device("cpu"))


def test_triplanar_variant_trains_and_samples(tmp_path, config):
    from mrisr.data.degrade import downsample

    cfg = {**config, "model": {**config["model"], "variant": "triplanar2d"}, "cascade": {"factors": [2]},
           "train": {**config["train"], "steps": 2, "val_every": 2}}
    pairs = []
    for seed in range(2):
        hr, mask = _volumes(seed)
        pairs.append(stage_pair(hr, downsample(hr, 2), mask, [2], 0))
    ckpt = tmp_path / "tri.pt"
    train_stage(pairs[:1], pairs[1:], cfg, 0, ckpt, tmp_path / "log.tsv", device="cpu", log=lambda m: None)
    stage = load_stage(ckpt, torch.device("cpu"))
    assert type(stage.model).__name__ == "TriPlanarUNet"
    out = super_resolve(downsample(_volumes(3)[0], 2), [ckpt], cfg["sampling"], device="cpu", log=lambda m: None)
    assert out[-1].mean.shape == (16, 16, 16)
