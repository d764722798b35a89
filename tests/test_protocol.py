"""The acquisition protocol: the LR is made from the whole head, and the HR's brain mask never shapes it."""

from __future__ import annotations

import numpy as np
import pytest

from mrisr import pipeline
from mrisr.data.degrade import downsample, downsample_affine
from mrisr.data.protocol import Acquisition, aligned_box, box_start
from mrisr.io import load_volume, save_volume

AFFINE = np.array([[1.5, 0, 0, -30.0], [0, 1.5, 0, -40.0], [0, 0, 1.5, -20.0], [0, 0, 0, 1]])


def _head(seed: int = 0, shape=(41, 44, 38)):
    """A noisy head-like volume (bright shell around a textured ball) and a brain mask inside it."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(sum(((g - (n - 1) / 2) / (n / 2)) ** 2 for g, n in zip(grid, shape)))
    t1 = np.where(r < 0.6, 600 + 300 * rng.random(shape), np.where(r < 0.85, 900.0, 0.0))
    t1 = t1 + 20 * rng.standard_normal(shape) ** 2
    return t1.astype(np.float32), (r < 0.55)


def _prepare(tmp_path, t1, mask, protocol: str, factor: int = 2, normalise: str = "field_of_view"):
    """skullstrip and make_lr as the workflow runs them; returns (hr, lr, mask) arrays and their affines.
    (The ball-in-a-shell head has no brain that brain extraction can find: its scale is its field of view's.)"""
    tmp_path.mkdir(exist_ok=True)
    raw, raw_mask = tmp_path / "raw.nii.gz", tmp_path / "raw_mask.nii.gz"
    save_volume(raw, t1, AFFINE)
    save_volume(raw_mask, mask.astype(np.uint8), AFFINE, dtype=np.uint8)
    files = {k: str(tmp_path / f"{protocol}_{k}.nii.gz") for k in ("hr", "mask", "lr")}
    acquisition = Acquisition(factor, 3, "spline", normalise) if protocol == "acquisition" else None
    pipeline.skullstrip(str(raw), files["hr"], files["mask"], 3.0, factor, 99.5, str(raw_mask), acquisition)
    pipeline.make_lr(files["hr"], files["lr"], Acquisition(factor, 3, "spline", normalise),
                     raw_t1=str(raw) if protocol == "acquisition" else None)
    return {k: load_volume(p) for k, p in files.items()}


def test_the_hr_mask_never_reaches_the_lr_under_the_acquisition_protocol(tmp_path):
    t1, mask = _head()
    smaller = mask.copy()
    smaller[18:24, 20:26, 15:22] = False  # a hole inside the brain: the box stays the same
    a = _prepare(tmp_path / "a", t1, mask, "acquisition")
    b = _prepare(tmp_path / "b", t1, smaller, "acquisition")
    np.testing.assert_array_equal(a["lr"][0], b["lr"][0])
    np.testing.assert_array_equal(a["hr"][0], b["hr"][0])  # the HR keeps the whole head: no mask applied
    assert not np.array_equal(a["mask"][0], b["mask"][0])
    # The seed's masked protocol: the mask's hole is carved into the HR and so into the LR.
    c = _prepare(tmp_path / "c", t1, mask, "masked")
    d = _prepare(tmp_path / "d", t1, smaller, "masked")
    assert not np.array_equal(c["lr"][0], d["lr"][0])


def test_the_acquired_lr_is_the_whole_field_of_view_degraded_then_cropped(tmp_path):
    t1, mask = _head(1)
    out = _prepare(tmp_path, t1, mask, "acquisition", factor=2)
    (hr, hr_affine), (lr, lr_affine) = out["hr"], out["lr"]
    np.testing.assert_allclose(lr_affine, downsample_affine(hr_affine, 2), atol=1e-6)  # LR lies over the HR
    start = box_start(AFFINE, hr_affine)
    assert all(s % 2 == 0 for s in start) and all(n % 2 == 0 for n in hr.shape)
    padded = np.pad(t1, [(0, n % 2) for n in t1.shape])
    full = downsample(padded, 2, 3, "spline")
    scale = np.percentile(full, 99.5)  # the LR's own field of view sets the scale, for HR and LR alike
    lo = [s // 2 for s in start]
    inside = tuple(slice(max(0, a), a + n) for a, n in zip(lo, lr.shape))
    expected = np.clip(full[inside] / scale, 0, 1)
    got = lr[tuple(slice(max(0, -a), max(0, -a) + (s.stop - s.start)) for a, s in zip(lo, inside))]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(hr[hr > 0].max(), min(1.0, t1.max() / scale), rtol=1e-5)
    assert (hr[out["mask"][0] == 0] > 0).any(), "the HR keeps the head outside the brain"


def test_aligned_box_starts_and_ends_on_the_factor():
    mask = np.zeros((30, 31, 29), bool)
    mask[7:20, 5:23, 9:18] = True
    start, shape = aligned_box(mask, np.eye(4), 2.0, 4)
    assert all(s % 4 == 0 and n % 4 == 0 for s, n in zip(start, shape))
    assert all(s <= lo - 2 and s + n >= hi + 2 for s, n, lo, hi in zip(start, shape, (7, 5, 9), (20, 23, 18)))
    with pytest.raises(ValueError, match="not a box of the raw volume"):
        box_start(np.eye(4), np.diag([2.0, 2, 2, 1]))


def test_the_brain_sets_the_scale_whatever_the_scalp():
    """normalise: brain reads the percentile off the LR's own brain (found on the LR grid), so a scalp twice as
    bright leaves the brain's normalised intensity within 3 %; the field of view's percentile moves with the scalp."""
    from mrisr.data.demo import make_demo_subject
    from mrisr.data.protocol import lr_scale

    sub = make_demo_subject(4, noise=False)
    head = sub.mask == 0
    bright = np.where(head, 2.0 * sub.t1, sub.t1)
    lr_affine = downsample_affine(sub.affine, 2)
    acquisition = Acquisition(2)
    scales = {normalise: [lr_scale(acquisition.lr_of_field_of_view(t1), lr_affine, 99.5, normalise)
                          for t1 in (sub.t1, bright)] for normalise in ("brain", "field_of_view")}
    assert abs(scales["brain"][1] / scales["brain"][0] - 1) < 0.03, scales
    assert scales["field_of_view"][1] / scales["field_of_view"][0] > 1.3, scales
    white = np.percentile(sub.t1[sub.mask > 0], 99.5)
    assert abs(scales["brain"][0] / white - 1) < 0.05, (scales, white)
    # A scan as acquired whose scalp puts its brain at half the usual field-of-view-normalised intensity
    # (the earlier rule) reaches the network with the same brain (apply mode, the CLI: normalise_scan).
    from mrisr.data.protocol import normalise_scan

    lr = [acquisition.lr_of_field_of_view(t1) for t1 in (sub.t1, bright)]
    brain = np.pad(sub.mask, [(0, n % 2) for n in sub.mask.shape])[::2, ::2, ::2] > 0
    by_brain = [normalise_scan(v, brain, lr_affine, 99.5, "scan", "acquisition", "brain")[0] for v in lr]
    by_fov = [normalise_scan(v, brain, lr_affine, 99.5, "scan", "acquisition", "field_of_view")[0] for v in lr]
    assert np.median(by_fov[1][brain]) < 0.65 * np.median(by_fov[0][brain])  # the earlier rule: about half
    assert abs(np.median(by_brain[1][brain]) / np.median(by_brain[0][brain]) - 1) < 0.03


def test_a_scan_without_a_findable_brain_is_refused_by_name():
    from mrisr.data.brain_extraction import BrainExtractionError
    from mrisr.data.protocol import lr_scale

    t1, _ = _head()
    with pytest.raises(BrainExtractionError, match="scan.nii.gz: no brain found to set the intensity scale"):
        lr_scale(t1, AFFINE, 99.5, "brain", "scan.nii.gz")
