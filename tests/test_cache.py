"""Training data on disk: .npy boxes read with pread, stage caches, and the patch stream drawn from them."""

from __future__ import annotations

import json
from dataclasses import replace
import pickle

import numpy as np
import pytest

from mrisr.diffusion.cascade import StagePair
from mrisr.io import NpyArray, VolumeError, save_npy
from mrisr.training import CachedVolume, MemoryVolume, PatchSampler, write_stage_cache
from mrisr.training.cache import brain_box, read_cache_info
from mrisr.training.patches import CondAugment, IntensityAugment, batch_loader, intensity_map


def _pair(seed: int = 0, shape=(20, 24, 18)) -> StagePair:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[5:15, 6:20, 4:11] = rng.random((10, 14, 7)) < 0.6
    cond = rng.random(shape, dtype=np.float32)
    return StagePair(cond=cond, target=(cond * 2 - 1).astype(np.float32), mask=mask)


def test_npy_boxes_are_the_array_zero_padded_outside(tmp_path):
    a = np.random.default_rng(1).random((7, 9, 11)).astype(np.float32)
    save_npy(tmp_path / "a.npy", a)
    array = NpyArray(tmp_path / "a.npy")
    padded = np.pad(a, [(6, 6)] * 3)
    for box in [(slice(0, 7), slice(0, 9), slice(0, 11)), (slice(-3, 4), slice(5, 13), slice(-1, 2)),
                (slice(2, 3), slice(8, 9), slice(10, 11)), (slice(-6, -1), slice(0, 4), slice(0, 4))]:
        expected = padded[tuple(slice(b.start + 6, b.stop + 6) for b in box)]
        np.testing.assert_array_equal(array.read(box), expected)
    again = pickle.loads(pickle.dumps(array))  # as a loader worker receives it: opened anew
    np.testing.assert_array_equal(again.read((slice(1, 5),) * 3), a[1:5, 1:5, 1:5])


def test_npy_errors_name_the_file(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(VolumeError, match="junk.npy: not a .npy file"):
        NpyArray(tmp_path / "junk.npy")
    save_npy(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(VolumeError, match="flat.npy: expected a C-ordered 3D"):
        NpyArray(tmp_path / "flat.npy")
    save_npy(tmp_path / "cut.npy", np.zeros((4, 4, 4), np.float32))
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-40])
    with pytest.raises(VolumeError, match="cut.npy: file ends early"):
        NpyArray(tmp_path / "cut.npy").read((slice(0, 4),) * 3)


def test_a_cached_volume_reads_as_the_pair_it_was_made_from(tmp_path):
    pair = _pair()
    info = write_stage_cache(pair, tmp_path / "s1", [1.4, 1.4, 1.4])
    cached, memory = CachedVolume(tmp_path / "s1"), MemoryVolume(pair)
    assert cached.shape == memory.shape == pair.cond.shape and info.lr_voxel_size_mm == (1.4, 1.4, 1.4)
    assert cached.brain_box == memory.brain_box == ((5, 6, 4), (15, 20, 11))
    assert cached.digest == memory.digest
    box = (slice(-2, 10), slice(3, 30), slice(7, 12))
    for name in ("cond", "target"):
        np.testing.assert_array_equal(cached.read(name, box), memory.read(name, box))
    assert all(cached.is_brain(i) == pair.mask[i] for i in [(5, 6, 4), (14, 19, 10), (0, 0, 0), (10, 12, 8)])
    a = PatchSampler([cached], 8, seed=3, flip=True).batch(7, range(6))
    b = PatchSampler([memory], 8, seed=3, flip=True).batch(7, range(6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_a_regenerated_volume_changes_the_digest_and_an_old_cache_format_is_refused(tmp_path):
    pair = _pair()
    changed = StagePair(cond=pair.cond, target=pair.target + np.float32(1e-3), mask=pair.mask)
    assert MemoryVolume(changed).digest != MemoryVolume(pair).digest
    write_stage_cache(pair, tmp_path / "s1", [1.0] * 3)
    info = json.loads((tmp_path / "s1" / "cache.json").read_text())
    (tmp_path / "s1" / "cache.json").write_text(json.dumps({**info, "format": 0}))
    with pytest.raises(VolumeError, match=r"s1/cache.json: cache format 0"):
        CachedVolume(tmp_path / "s1")


def test_patches_are_a_function_of_seed_step_and_row_centred_on_brain_voxels():
    pairs = [_pair(0), _pair(1)]
    sampler = PatchSampler([MemoryVolume(p) for p in pairs], 6, seed=11)
    whole = sampler.batch(4, range(8))
    part = sampler.batch(4, range(5, 8))  # a DDP worker's rows: the same patches
    np.testing.assert_array_equal(whole[0][5:], part[0])
    assert not np.array_equal(sampler.batch(5, range(8))[0], whole[0])
    assert not np.array_equal(PatchSampler(sampler.volumes, 6, seed=12).batch(4, range(8))[0], whole[0])
    picks = [sampler.pick(step, row) for step in range(50) for row in range(4)]
    assert all(pairs[p.k].mask[p.centre] for p in picks)
    assert {p.k for p in picks} == {0, 1}
    lo, hi = brain_box(pairs[0].mask)
    assert {p.centre[0] for p in picks if p.k == 0} == set(range(lo[0], hi[0]))  # every slab with brain is reached


def test_conditioning_augmentation_blurs_and_noises_the_condition_only_by_its_picked_amounts():
    """train.cond_augment: each patch's condition blurred by its pick's sd (as blurring the whole volume would)
    plus noise of its pick's sd; the target untouched; levels uniform in [0, max]; no augmentation draws nothing."""
    from scipy.ndimage import gaussian_filter

    pair = _pair(0, shape=(40, 40, 40))
    pair = StagePair(cond=gaussian_filter(pair.cond, 1.0), target=pair.target, mask=np.ones_like(pair.mask))
    volumes = [MemoryVolume(pair)]
    plain = PatchSampler(volumes, 8, seed=3)
    assert PatchSampler(volumes, 8, seed=3, augment=CondAugment()).augment is None
    blur = PatchSampler(volumes, 8, seed=3, augment=CondAugment(blur=2.0))
    noise = PatchSampler(volumes, 8, seed=3, augment=CondAugment(noise=0.1))
    picks = [blur.pick(s, r) for s in range(100) for r in range(4)]
    assert [p.centre for p in picks] == [plain.pick(s, r).centre for s in range(100) for r in range(4)]
    levels = np.array([p.blur for p in picks])
    assert 0 <= levels.min() < 0.2 and 1.8 < levels.max() <= 2.0 and abs(levels.mean() - 1.0) < 0.15
    inside = next(p for p in picks if all(8 <= c <= 31 for c in p.centre) and p.blur > 1.0)
    (cond,), target = blur.patch(inside)
    box = tuple(slice(c - 4, c + 4) for c in inside.centre)
    np.testing.assert_allclose(cond, gaussian_filter(pair.cond, inside.blur, mode="constant")[box], atol=1e-4)
    np.testing.assert_array_equal(target, pair.target[box])
    pick = next(p for p in (noise.pick(s, 0) for s in range(100)) if all(4 <= c <= 35 for c in p.centre))
    (cond,), target = noise.patch(pick)
    residual = cond - pair.cond[tuple(slice(c - 4, c + 4) for c in pick.centre)]
    assert abs(residual.std() - pick.noise) < 0.15 * pick.noise
    np.testing.assert_array_equal(noise.patch(pick)[0][0], cond)  # a pick's noise is a function of the pick


def test_intensity_augmentation_maps_condition_prediction_and_target_alike_but_never_the_mask():
    """predictor/train.intensity_augment: one f(x) = s sign(x)|x|^gamma per pick on every intensity channel and the
    target (so a predict-and-refine residual is f(HR) - f(g)), the mask channel untouched; s and gamma
    log-uniform within [1/max, max]; off draws nothing, so the plain stream (centres, flips) is unchanged."""
    pair = _pair(0, shape=(24, 24, 24))
    pred = (pair.cond * 0.5 + 0.1).astype(np.float32)
    pair = StagePair(cond=pair.cond - 0.2, target=pair.target, mask=pair.mask, pred=pred)  # negatives in cond
    volumes = [MemoryVolume(pair)]
    names = ("cond", "pred")
    plain = PatchSampler(volumes, 8, seed=5, flip=True, cond_names=names)
    assert PatchSampler(volumes, 8, seed=5, intensity=IntensityAugment()).intensity is None
    both = PatchSampler(volumes, 8, seed=5, flip=True, cond_names=names, intensity=IntensityAugment(1.5, 1.3))
    picks = [both.pick(s, r) for s in range(200) for r in range(2)]
    assert [(p.centre, p.axes) for p in picks] == [(q.centre, q.axes) for q in
                                                   (plain.pick(s, r) for s in range(200) for r in range(2))]
    gains, gammas = np.log([p.gain for p in picks]), np.log([p.gamma for p in picks])
    for logs, top in ((gains, np.log(1.5)), (gammas, np.log(1.3))):
        assert np.abs(logs).max() <= top and np.abs(logs).max() > 0.9 * top and abs(logs.mean()) < 0.1 * top
    pick = next(p for p in picks if p.gamma > 1.15 and p.gain < 0.8)
    (cond, extra), target = both.patch(pick)
    (cond0, extra0), target0 = plain.patch(replace(pick, gain=1.0, gamma=1.0))
    f = lambda x: pick.gain * np.sign(x) * np.abs(x) ** pick.gamma  # noqa: E731
    for got, raw in ((cond, cond0), (extra, extra0), (target, target0)):
        assert (raw < 0).any() or raw is extra0
        np.testing.assert_allclose(got, f(raw.astype(np.float64)), rtol=1e-5, atol=1e-6)
    masked = PatchSampler(volumes, 8, seed=5, cond_names=("cond", "mask"), intensity=IntensityAugment(1.5, 1.3))
    (cond, mask), _ = masked.patch(replace(pick, axes=()))
    np.testing.assert_array_equal(mask, pair.mask[tuple(slice(c - 4, c + 4) for c in pick.centre)])
    assert intensity_map(cond0, 1.0, 1.0) is cond0  # the identity costs nothing


def test_loader_workers_deliver_the_same_batches_in_order(tmp_path):
    caches = []
    for k in range(2):
        write_stage_cache(_pair(k), tmp_path / f"s{k}", [1.0] * 3)
        caches.append(CachedVolume(tmp_path / f"s{k}"))
    sampler = PatchSampler(caches, 8, seed=0, flip=True)
    inline = list(batch_loader(sampler, range(1, 3), 3, 9, workers=0, pin_memory=False))
    workers = list(batch_loader(sampler, range(1, 3), 3, 9, workers=2, pin_memory=False))
    assert len(inline) == len(workers) == 6
    for (c0, t0), (c1, t1), step in zip(inline, workers, range(3, 9)):
        assert c0.shape == (2, 1, 8, 8, 8)
        np.testing.assert_array_equal(c0.numpy(), c1.numpy())
        np.testing.assert_array_equal(t1.numpy(), sampler.batch(step, range(1, 3))[1])


def test_the_training_lrs_tissue_level_travels_from_the_caches_to_the_job_config(tmp_path):
    """Each cache records its LR's tissue level (or none, as old caches and coarse grids have); a train job
    records the median over its training subjects that have one, beside the LR's voxel size."""
    from mrisr.training import StageRun, TrainJob

    levels = {"a": 0.5, "b": 0.7, "c": None, "d": 0.6}
    for subject, level in levels.items():
        write_stage_cache(_pair(), tmp_path / subject, [4.0] * 3, level)
        assert read_cache_info(tmp_path / subject).lr_tissue_level == level
    splits = tmp_path / "splits.tsv"
    splits.write_text("subject\tsplit\na\ttrain\nb\ttrain\nc\ttrain\nd\tval\n")
    run = StageRun({"cascade": {"factors": [2]}}, 0, str(tmp_path / "ck.pt"), str(tmp_path / "log.tsv"))
    job = TrainJob(run, str(splits), caches={s: str(tmp_path / s) for s in levels}).with_training_data()
    assert job.run.config["data"] == {"lr_voxel_size_mm": [4.0] * 3, "lr_brain_median": 0.6}  # of a and b only
    bare = TrainJob(run, str(splits), caches={s: str(tmp_path / s) for s in levels} | {"a": str(tmp_path / "c"),
                                                                                       "b": str(tmp_path / "c")})
    assert "lr_brain_median" not in bare.with_training_data().run.config["data"]
