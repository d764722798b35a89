"""Demo cohort, skull stripping, splits and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from mrisr import metrics
from mrisr.data.demo import demo_subject_ids, demo_subject_index, make_demo_subject
from mrisr.data.skullstrip import brain_box, skullstrip_with_mask
from mrisr.data.splits import read_splits, split_subjects, write_splits


@pytest.fixture(scope="module")
def demo_pair():
    return (make_demo_subject(0, seed=0, voxel_size_mm=4.0, anatomy="template"),
            make_demo_subject(1, seed=0, voxel_size_mm=4.0, anatomy="template"))


def test_template_demo_subjects_are_distinct_and_reproducible(demo_pair):
    a, b = demo_pair
    assert a.t1.shape == (49, 58, 47)  # the 1 mm template's field of view at 4 mm
    assert 0.15 < a.mask.mean() < 0.3  # the MNI brain is ~22 % of the field of view
    brain = a.mask > 0
    assert a.t1[brain].mean() > 5 * a.t1[~brain].mean(), "brain brighter than noisy background"
    assert np.abs(a.t1 - b.t1).mean() > 0.1 * a.t1.mean(), "subjects differ"
    again = make_demo_subject(0, seed=0, voxel_size_mm=4.0, anatomy="template")
    np.testing.assert_array_equal(a.t1, again.t1)
    np.testing.assert_allclose(a.affine[:3, :3], np.diag([4.0, 4.0, 4.0]))


def test_real_demo_subjects_are_the_shipped_brains_in_a_head():
    """Subject k is shipped brain k (different people): its mask is the brain's non-zero region, the brain's
    voxels are the brain's own under a mild gamma, the head around it is bright, the subject is reproducible."""
    from mrisr.data import cohort

    assert cohort.n_brains() == 12 and cohort.DATASET["license"] == "CC0"
    clean = make_demo_subject(2, seed=0, noise=False)
    brain, affine = cohort.load_brain(2)
    pad = (clean.t1.shape[0] - brain.shape[0]) // 2
    inner = clean.mask[pad:pad + brain.shape[0], pad:pad + brain.shape[1], : brain.shape[2]]
    np.testing.assert_array_equal(inner, brain > 0)
    assert clean.mask.sum() == (brain > 0).sum()
    np.testing.assert_allclose(clean.affine[:3, :3], affine[:3, :3])
    np.testing.assert_allclose(clean.affine[:3, 3], affine[:3, :3] @ [-pad, -pad, 0] + affine[:3, 3])
    values = clean.t1[clean.mask > 0] / clean.t1[clean.mask > 0].max()
    assert np.corrcoef(np.log(values), np.log(brain[brain > 0]))[0, 1] > 0.9  # the same anatomy, bias aside
    head = (clean.mask == 0) & (clean.t1 > 0.3 * np.percentile(clean.t1[clean.mask > 0], 99))
    assert head.sum() > 0.1 * clean.mask.sum(), "a head around the brain"
    other = make_demo_subject(3, seed=0, noise=False)
    assert other.mask.sum() != clean.mask.sum(), "another person"
    np.testing.assert_array_equal(make_demo_subject(2, seed=0).t1, make_demo_subject(2, seed=0).t1)
    with pytest.raises(ValueError, match="12 subjects"):
        make_demo_subject(12)
    with pytest.raises(ValueError, match=r"\[2, 4\]"):
        make_demo_subject(0, voxel_size_mm=1.5)


def test_real_demo_subjects_at_a_coarser_grid_keep_their_brain_volume():
    coarse = float(make_demo_subject(0, voxel_size_mm=3.0).mask.sum()) * 27.0
    fine = float(make_demo_subject(0, noise=False).mask.sum()) * 8.0
    assert abs(coarse - fine) < 0.03 * fine
    np.testing.assert_allclose(np.abs(np.diag(make_demo_subject(1, voxel_size_mm=3.0).affine)[:3]), 3.0)


def test_a_demo_subject_without_noise_is_the_same_subject_before_its_rician_noise(demo_pair):
    """noise=False: every draw but the noise identical; the difference is Rician noise of 1-2 % of the maximum
    (in the bright brain, nearly Gaussian with that sd)."""
    noisy = demo_pair[0]
    clean = make_demo_subject(0, seed=0, voxel_size_mm=4.0, noise=False, anatomy="template")
    np.testing.assert_array_equal(clean.mask, noisy.mask)
    np.testing.assert_array_equal(clean.affine, noisy.affine)
    bright = (noisy.mask > 0) & (clean.t1 > 0.5 * clean.t1.max())
    sd = float((noisy.t1 - clean.t1)[bright].std())
    assert 0.008 * clean.t1.max() < sd < 0.022 * clean.t1.max(), sd
    assert abs(float((noisy.t1 - clean.t1)[bright].mean())) < 0.3 * sd


def test_demo_ids():
    assert demo_subject_ids(3) == ["demo01", "demo02", "demo03"]
    assert demo_subject_index("demo10") == 9
    with pytest.raises(ValueError, match="not a demo subject"):
        demo_subject_index("100307")


def test_skullstrip_crops_to_a_multiple_and_keeps_world_position(demo_pair):
    sub = demo_pair[0]
    out = skullstrip_with_mask(sub.t1, sub.mask, sub.affine, margin_mm=8.0, multiple=4)
    assert all(s % 4 == 0 for s in out.t1.shape)
    assert out.mask.sum() == sub.mask.sum(), "the whole brain is inside the box"
    assert out.t1.max() == 1.0 and np.all(out.t1[out.mask == 0] == 0)
    start, _ = brain_box(sub.mask > 0, sub.affine, 8.0, 4)
    np.testing.assert_allclose(out.affine[:3, 3], sub.affine[:3, :3] @ np.array(start) + sub.affine[:3, 3])


def test_split_is_disjoint_complete_seeded_and_order_free(tmp_path):
    subjects = [f"s{i:03d}" for i in range(40)]
    a = split_subjects(subjects, seed=7, val_fraction=0.1, test_fraction=0.2)
    assert set(a) == set(subjects)
    groups = {k: {s for s, v in a.items() if v == k} for k in ("train", "val", "test")}
    assert len(groups["val"]) == 4 and len(groups["test"]) == 8 and len(groups["train"]) == 28
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert split_subjects(list(reversed(subjects)), 7, 0.1, 0.2) == a
    assert split_subjects(subjects, 8, 0.1, 0.2) != a
    write_splits(tmp_path / "splits.tsv", a)
    assert read_splits(tmp_path / "splits.tsv") == a


def test_split_needs_enough_subjects():
    with pytest.raises(ValueError, match="cannot fill train"):
        split_subjects(["a", "b"], 0, 0.2, 0.2)


def test_psnr_hand_computed_inside_mask_only():
    ref = np.zeros((8, 8, 8))
    mask = np.zeros_like(ref, bool)
    mask[2:6, 2:6, 2:6] = True
    est = ref.copy()
    est[mask] = 0.1  # MSE in the mask = 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB
    est[~mask] = 0.9  # outside the mask: ignored
    assert metrics.psnr_in_mask(ref, est, mask) == pytest.approx(20.0, abs=1e-9)


def test_ssim_in_mask():
    rng = np.random.default_rng(0)
    ref = rng.random((16, 16, 16))
    mask = np.ones_like(ref, bool)
    assert metrics.ssim_in_mask(ref, ref, mask) == pytest.approx(1.0)
    noisy = ref + 0.2 * rng.standard_normal(ref.shape)
    assert metrics.ssim_in_mask(ref, noisy, mask) < 0.9
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.ssim_in_mask(ref, ref[:8], mask)


def test_error_vs_uncertainty_bins_sorted_by_sd_and_tracks_calibrated_noise():
    rng = np.random.default_rng(0)
    ref = rng.random((20, 20, 20)) * 0.5 + 0.25
    sd = rng.uniform(0.001, 0.1, size=ref.shape)
    est = ref + sd * rng.standard_normal(ref.shape)  # errors drawn with the predicted sd
    mask = np.ones_like(ref, bool)
    rows = metrics.error_vs_uncertainty(ref, est, sd, mask, n_bins=5)
    assert len(rows) == 5 and sum(r["voxels"] for r in rows) == mask.sum()
    assert [r["sd"] for r in rows] == sorted(r["sd"] for r in rows)
    for r in rows:  # calibrated by construction: rms error equals rms sd within a few %
        assert r["rmse"] == pytest.approx(r["sd"], rel=0.15)


def test_sd_calibration_by_scale_pools_squared_errors_and_sds_over_brain_voxels_of_all_subjects():
    """scale: s = sqrt(sum err^2 / sum sd^2) over the pooled brain voxels (metrics docstring): a constant error of
    0.1 and sd 0.05 give 2; two subjects pool by voxel count, not by subject; voxels outside the mask do not count."""
    ref = np.full((6, 6, 6), 0.5)
    mask = np.zeros(ref.shape, bool)
    mask[1:5, 1:5, 1:5] = True
    est = np.where(mask, ref + 0.1, 0.9)  # outside the mask the error is 0.4: not counted
    a = metrics.calibration_sums(ref, est, np.full(ref.shape, 0.05), mask)
    assert a["voxels"] == 64 and a["sum_sq_error"] == pytest.approx(64 * 0.01)
    assert metrics.fit_sd_calibration([a], "scale") == metrics.SdCalibration(floor=0.0, scale=pytest.approx(2.0))
    small = np.zeros(ref.shape, bool)
    small[2, 2, 2] = True  # one voxel, error 0.3 and sd 0.05
    b = metrics.calibration_sums(ref, ref + 0.3, np.full(ref.shape, 0.05), small)
    expected = np.sqrt((64 * 0.01 + 0.09) / (65 * 0.05 ** 2))
    assert metrics.fit_sd_calibration([a, b], "scale").scale == pytest.approx(expected)
    # a calibrated map (errors drawn with the predicted sd) needs no scaling
    rng = np.random.default_rng(1)
    sd = rng.uniform(0.01, 0.05, size=(24, 24, 24))
    ref = np.full(sd.shape, 0.5)
    drawn = metrics.calibration_sums(ref, ref + sd * rng.standard_normal(sd.shape), sd, np.ones(sd.shape, bool))
    assert metrics.fit_sd_calibration([drawn], "scale").scale == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="zero in every brain voxel"):
        metrics.fit_sd_calibration([metrics.calibration_sums(ref, ref, np.zeros(sd.shape), np.ones(sd.shape, bool))])
    with pytest.raises(ValueError, match="unknown sd calibration 'isotonic'"):
        metrics.fit_sd_calibration([drawn], "isotonic")


def test_sd_calibration_with_a_floor_recovers_a_floor_and_a_scale_and_keeps_the_rms():
    """floor_scale: the least-squares line err^2 = a^2 + b^2 sd^2. Errors built exactly on such a line give back
    a and b; any fit keeps mean(calibrated^2) = mean(err^2); a negative intercept falls back to scale alone."""
    rng = np.random.default_rng(4)
    sd = rng.uniform(0.0, 0.02, size=(20, 20, 20))
    ref = np.full(sd.shape, 0.3)
    err = np.sqrt(0.03 ** 2 + (2.5 * sd) ** 2) * rng.choice([-1.0, 1.0], size=sd.shape)
    whole = np.ones(sd.shape, bool)
    fitted = metrics.fit_sd_calibration([metrics.calibration_sums(ref, ref + err, sd, whole)])
    assert fitted.floor == pytest.approx(0.03, rel=1e-4) and fitted.scale == pytest.approx(2.5, rel=1e-4)
    np.testing.assert_allclose(fitted.apply(sd), np.abs(err), rtol=1e-4)
    noisy = ref + sd * rng.standard_normal(sd.shape) * 3 + 0.01 * rng.standard_normal(sd.shape)
    sums = metrics.calibration_sums(ref, noisy, sd, whole)
    fitted = metrics.fit_sd_calibration([sums])
    assert np.mean(fitted.apply(sd).astype(np.float64) ** 2) == pytest.approx(sums["sum_sq_error"] / sums["voxels"])
    # errors that shrink where sd is small, more than in proportion: the line's intercept is negative
    steep = ref + np.where(sd > 0.01, 5 * sd, 0.0)
    sums = metrics.calibration_sums(ref, steep, sd, whole)
    assert metrics.fit_sd_calibration([sums]) == metrics.fit_sd_calibration([sums], "scale")
    # errors that fall where the samples spread more: a negative slope becomes 0, the map the constant RMS error
    inverse = ref + 0.03 - sd
    sums = metrics.calibration_sums(ref, inverse, sd, whole)
    fitted = metrics.fit_sd_calibration([sums])
    assert fitted.scale == 0 and fitted.floor == pytest.approx(np.sqrt(sums["sum_sq_error"] / sums["voxels"]))


def test_fit_sd_calibration_then_calibrate_sd_make_the_validation_maps_rms_match_their_error(tmp_path):
    """The workflow's two steps: the calibration fitted on validation files, then a map put through it; a file
    that is not one fails with its path, and nothing is written."""
    import json

    from mrisr.io import InputError, load_volume, save_volume
    from mrisr.pipeline import calibrate_sd, fit_sd_calibration

    rng = np.random.default_rng(2)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {k: [] for k in ("hr", "mask", "sr", "sd")}
    for k in range(2):
        hr = rng.uniform(0.2, 0.8, size=(10, 11, 12))
        mask = np.zeros(hr.shape)
        mask[2:8, 2:9, 2:10] = 1
        sd = rng.uniform(0.01, 0.03, size=hr.shape)
        sr = hr + 3 * sd * rng.standard_normal(hr.shape)  # errors three times the sd
        for key, vol in zip(files, (hr, mask, sr, sd)):
            files[key].append(str(tmp_path / f"{key}{k}.nii.gz"))
            save_volume(files[key][-1], vol, affine)
    out = tmp_path / "calibration" / "sd_calibration.json"
    for method in ("scale", "floor_scale"):
        sampling = {"n_samples": 3}
        fit_sd_calibration(["v0", "v1"], files, method, sampling, str(out))
        record = json.loads(out.read_text())
        assert record["method"] == method and sorted(record["subjects"]) == ["v0", "v1"]
        assert record["sampling"] == sampling and record["voxels"] == 2 * 6 * 7 * 8
        pooled = sum(v["rms_sd_calibrated"] ** 2 * v["voxels"] for v in record["subjects"].values())
        assert np.sqrt(pooled / record["voxels"]) == pytest.approx(record["rms_error"], rel=1e-4)
    # errors on a line through 0 (3 sd): a small floor, a scale near 3 (per-voxel squared errors are noisy)
    assert record["scale"] == pytest.approx(3.0, rel=0.1) and record["floor"] < 0.3 * record["rms_error"]
    calibrate_sd(files["sd"][0], str(out), str(tmp_path / "calibrated.nii.gz"))
    calibrated, calibrated_affine = load_volume(tmp_path / "calibrated.nii.gz")
    expected = np.sqrt(record["floor"] ** 2 + (record["scale"] * load_volume(files["sd"][0])[0]) ** 2)
    np.testing.assert_allclose(calibrated, expected, rtol=1e-5)
    np.testing.assert_array_equal(calibrated_affine, affine)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"floor": 0.01, "scale": -1}))
    with pytest.raises(InputError, match=f"{bad}: the sd calibration's scale must be a number >= 0, not -1"):
        calibrate_sd(files["sd"][0], str(bad), str(tmp_path / "never.nii.gz"))
    assert not (tmp_path / "never.nii.gz").exists()
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not an sd calibration file"):
        calibrate_sd(files["sd"][0], str(bad), str(tmp_path / "never.nii.gz"))


def test_ssim_with_a_partial_mask_against_a_hand_computation():
    """Wang et al. 2004, eq. 13, with Gaussian-weighted population statistics (sigma 1.5, 3.5 sigma wide as
    skimage's window), the map over the whole volume, averaged over the masked voxels only."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    x = rng.random((14, 15, 16))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    mask = np.zeros(x.shape, bool)
    mask[3:9, 2:12, 5:15] = True
    blur = lambda v: ndimage.gaussian_filter(v, 1.5, truncate=3.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    assert metrics.ssim_in_mask(x, y, mask) == pytest.approx(ssim_map[mask].mean(), abs=1e-6)
    assert metrics.ssim_in_mask(x, y, mask) != pytest.approx(ssim_map.mean(), abs=1e-4)  # the mask matters


def test_interior_is_the_mask_eroded_by_two_voxels():
    mask = np.zeros((12, 12, 12), bool)
    mask[2:10, 2:10, 2:10] = True
    inner = metrics.interior(mask)
    expected = np.zeros_like(mask)
    expected[4:8, 4:8, 4:8] = True
    np.testing.assert_array_equal(inner, expected)
    touching = np.ones((6, 6, 6), bool)  # a mask that fills the volume: the volume's edge is the mask's edge
    assert metrics.interior(touching).sum() == 2 ** 3
    with pytest.raises(ValueError, match="no interior"):
        metrics.scores(np.zeros((6, 6, 6)), np.zeros((6, 6, 6)), np.pad(np.ones((2, 2, 2), bool), 2))


def test_hfen_is_the_relative_error_of_the_laplacian_of_gaussian():
    rng = np.random.default_rng(4)
    ref = 0.1 + 0.4 * rng.random((16, 16, 16))
    mask = np.zeros(ref.shape, bool)
    mask[3:13, 3:13, 3:13] = True
    assert metrics.hfen_in_mask(ref, ref, mask) == 0.0
    assert metrics.hfen_in_mask(ref, np.zeros_like(ref), mask) == pytest.approx(1.0)  # nothing of the edges
    assert metrics.hfen_in_mask(ref, 2 * ref, mask) == pytest.approx(1.0)  # LoG is linear: the error is LoG(ref)
    smooth = metrics.hfen_in_mask(ref, np.full_like(ref, ref.mean()), mask)
    assert smooth == pytest.approx(1.0, abs=0.05)  # a flat volume has lost every edge (LoG of a constant is 0)
    scores = metrics.scores(ref, ref + 0.01, mask)
    assert scores["psnr"] == pytest.approx(40.0) and scores["psnr_interior"] == pytest.approx(40.0)
    assert set(scores) == set(metrics.SCORES)
