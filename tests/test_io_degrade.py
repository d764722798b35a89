"""NIfTI round trips, errors that name the file, and the affines of degraded grids."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from mrisr.data.degrade import downsample, downsample_affine, downsample_mask, upsample, upsample_affine
from mrisr.io import VolumeError, atomic_path, crop_or_pad, load_volume, normalise_intensity, save_volume, voxel_sizes

def _oblique() -> np.ndarray:
    """A rotated, anisotropic, shifted affine (what a real oblique scan has; no shear)."""
    a, b = np.deg2rad(12.0), np.deg2rad(-7.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.2, 1.1, 0.9])
    affine[:3, 3] = [30.0, -40.0, 12.5]
    return affine


OBLIQUE = _oblique()


def test_round_trip_keeps_data_and_affine(tmp_path):
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    path = tmp_path / "sub" / "vol.nii.gz"
    save_volume(path, data, OBLIQUE)
    loaded, affine = load_volume(path)
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_allclose(affine, OBLIQUE, atol=1e-6)
    img = nib.load(path)
    np.testing.assert_allclose(img.get_qform(), OBLIQUE, atol=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["vol.nii.gz"], "no temporary file left"


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "vol.nii.gz"
    stale = tmp_path / ".vol.nii.gz.abc123.nii.gz"  # what a SIGKILLed save leaves
    stale.write_bytes(b"half a file")
    (tmp_path / ".other.nii.gz.x.nii.gz").write_bytes(b"not ours")
    save_volume(path, np.ones((2, 2, 2)), np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.nii.gz.x.nii.gz", "vol.nii.gz"]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "vol.nii.gz"
    with pytest.raises(ValueError):
        save_volume(path, np.zeros((2, 2)), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(VolumeError, match="missing.nii.gz: no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    cut = tmp_path / "cut.nii.gz"
    save_volume(cut, np.ones((10, 10, 10)), np.eye(4))
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match="cut.nii.gz: cannot read"):
        load_volume(cut)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), four)
    with pytest.raises(VolumeError, match=r"four.nii.gz: expected a 3D volume, got shape \(4, 4, 4, 3\)"):
        load_volume(four)
    nan = tmp_path / "nan.nii.gz"
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    with pytest.raises(VolumeError, match="nan.nii.gz: 1 voxels are NaN"):
        load_volume(nan)


def test_single_volume_4d_is_squeezed(tmp_path):
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), path)
    assert load_volume(path)[0].shape == (4, 5, 6)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_lr_affine_has_the_coarse_voxel_and_block_centres(factor):
    lr_affine = downsample_affine(OBLIQUE, factor)
    np.testing.assert_allclose(voxel_sizes(lr_affine), factor * voxel_sizes(OBLIQUE))
    # LR voxel (1, 2, 0) is the centre of HR block [f, 2f) x [2f, 3f) x [0, f)
    block = np.array([[i, j, k] for i in range(factor, 2 * factor)
                      for j in range(2 * factor, 3 * factor) for k in range(factor)], float)
    hr_world = (OBLIQUE[:3, :3] @ block.T + OBLIQUE[:3, 3:4]).mean(axis=1)
    lr_world = lr_affine[:3, :3] @ np.array([1.0, 2.0, 0.0]) + lr_affine[:3, 3]
    np.testing.assert_allclose(lr_world, hr_world, atol=1e-9)
    np.testing.assert_allclose(upsample_affine(lr_affine, factor), OBLIQUE, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_downsample_samples_a_linear_ramp_at_block_centres(order):
    f = 2
    i, j, k = np.indices((40, 36, 32), dtype=np.float64)
    ramp = 0.5 * i + 0.25 * j - 0.1 * k
    lr = downsample(ramp, f, order)
    assert lr.shape == (20, 18, 16)
    li, lj, lk = np.indices(lr.shape, dtype=np.float64)
    centre = lambda x: f * x + (f - 1) / 2  # noqa: E731
    expected = 0.5 * centre(li) + 0.25 * centre(lj) - 0.1 * centre(lk)
    inner = (slice(5, -5),) * 3  # 'nearest' edge handling bends the ramp near the border
    np.testing.assert_allclose(lr[inner], expected[inner], atol=1e-4)


def test_upsample_shape_and_constant():
    vol = np.full((5, 6, 7), 0.3, np.float32)
    up = upsample(vol, 3)
    assert up.shape == (15, 18, 21)
    np.testing.assert_allclose(up, 0.3, atol=1e-6)


def test_downsample_rejects_bad_input():
    with pytest.raises(ValueError, match="not divisible by the scale factor 2"):
        downsample(np.zeros((5, 6, 6)), 2)
    with pytest.raises(ValueError, match="positive integer"):
        downsample(np.zeros((6, 6, 6)), 1.5)
    with pytest.raises(ValueError, match="not divisible by the scale factor 1x1x4"):
        downsample(np.zeros((6, 6, 6)), (1, 1, 4))
    for bad in [(1, 2), (1, 0, 4), (1, 1, 2.5)]:
        with pytest.raises(ValueError, match="one per axis"):
            downsample(np.zeros((8, 8, 8)), bad)


def test_downsample_mask_majority():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :2, :2] = True
    small = downsample_mask(mask, 2)
    assert small.shape == (2, 2, 2) and small[0, 0, 0] and small.sum() == 1


def test_crop_or_pad_moves_the_affine():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    box, affine = crop_or_pad(vol, OBLIQUE, (-1, 1, 2), (3, 3, 3))
    assert box[0].sum() == 0  # padded row
    assert box[1, 0, 0] == vol[0, 1, 2]
    # box voxel (1, 0, 0) is original voxel (0, 1, 2) in world space
    np.testing.assert_allclose(affine @ [1, 0, 0, 1], OBLIQUE @ [0, 1, 2, 1])


def test_normalise_intensity():
    vol = np.linspace(0, 200, 1000).reshape(10, 10, 10).astype(np.float32)
    mask = np.ones_like(vol, bool)
    mask[0] = False
    out = normalise_intensity(vol, mask, percentile=99.5)
    assert out.max() == 1.0 and out.min() == 0.0 and np.all(out[0] == 0)
    with pytest.raises(ValueError, match="empty"):
        normalise_intensity(vol, np.zeros_like(mask))


def test_atomic_path_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.html") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.html").stat().st_mode & 0o777 == 0o644


# --- the three degradations, each against its definition ----------------------------------------------


def _cosine(n: int, k0: int, shape=(6, 4)) -> np.ndarray:
    """cos(2 pi k0 x / n) along axis 0 of an (n, *shape) volume."""
    return np.cos(2 * np.pi * k0 * np.arange(n) / n)[:, None, None] * np.ones((1, *shape))


@pytest.mark.parametrize("factor", [2, 3])
def test_kspace_keeps_the_central_block_of_the_spectrum_and_samples_at_voxel_centres(factor):
    n = 12 * factor
    m = n // factor
    rng = np.random.default_rng(0)
    hr = rng.random((n, n, n))
    lr = downsample(hr, factor, method="kspace")
    fine, coarse = np.fft.fftn(hr), np.fft.fftn(lr.astype(np.float64))
    k = np.fft.fftfreq(n, d=1 / n)
    shift = np.exp(2j * np.pi * k * (factor - 1) / 2 / n)  # samples at fine index f j + (f - 1) / 2
    inside = [i for i in range(n) if abs(k[i]) < m / 2]  # the central block less its Nyquist planes
    expected = fine * shift[:, None, None] * shift[None, :, None] * shift[None, None, :] / factor ** 3
    got = coarse[np.ix_(*[[int(k[i]) % m for i in inside]] * 3)]
    np.testing.assert_allclose(got, expected[np.ix_(inside, inside, inside)], atol=1e-4 * abs(fine).max())
    # a sinusoid below the coarse Nyquist is kept, sampled at the coarse voxel centres ...
    low = downsample(_cosine(n, m // 2 - 1, (factor, factor)), factor, method="kspace")[:, 0, 0]
    centres = factor * np.arange(m) + (factor - 1) / 2
    np.testing.assert_allclose(low, np.cos(2 * np.pi * (m // 2 - 1) * centres / n), atol=1e-6)
    # ... and one above it leaves nothing (spline sampling folds it back instead)
    high = _cosine(n, m // 2 + 2, (factor, factor))
    assert np.abs(downsample(high, factor, method="kspace")).max() < 1e-6
    assert np.abs(downsample(high, factor, method="spline")).max() > 0.3


def test_gaussian_attenuates_a_sinusoid_by_the_psf_transfer_function():
    from mrisr.data.degrade import gaussian_sigma

    n, f, k0 = 64, 2, 5
    lr = downsample(_cosine(n, k0, (f, f)), f, order=3, method="gaussian")[:, 0, 0]
    sigma = gaussian_sigma(f)
    assert 2 * np.sqrt(2 * np.log(2)) * sigma == pytest.approx(f)  # FWHM = factor voxels
    gain = np.exp(-2 * (np.pi * sigma * k0 / n) ** 2)  # the Fourier transform of the Gaussian at k0 / n
    centres = f * np.arange(n // f) + (f - 1) / 2
    inner = slice(6, -6)  # 'nearest' edges
    np.testing.assert_allclose(lr[inner], gain * np.cos(2 * np.pi * k0 * centres / n)[inner], atol=5e-3)
    assert gain < 0.95  # the attenuation is measurable, not within the tolerance


@pytest.mark.parametrize("method", ["spline", "gaussian", "kspace", "slice"])
def test_every_degradation_keeps_a_constant_and_refuses_unknown_names(method):
    np.testing.assert_allclose(downsample(np.full((8, 8, 8), 0.4), 2, method=method), 0.4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown degradation 'box'"):
        downsample(np.zeros((4, 4, 4)), 2, method="box")


@pytest.mark.parametrize("method", ["spline", "gaussian", "kspace"])
def test_a_per_axis_factor_of_equal_entries_gives_the_isotropic_result_to_the_last_digit(method):
    rng = np.random.default_rng(1)
    hr = rng.random((12, 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(downsample(hr, (2, 2, 2), method=method), downsample(hr, 2, method=method))
    lr = downsample(hr, 2)
    np.testing.assert_array_equal(upsample(lr, [2, 2, 2]), upsample(lr, 2))
    np.testing.assert_array_equal(downsample_affine(OBLIQUE, (3, 3, 3)), downsample_affine(OBLIQUE, 3))
    np.testing.assert_array_equal(upsample_affine(OBLIQUE, (3, 3, 3)), upsample_affine(OBLIQUE, 3))
    mask = hr > 0.5
    np.testing.assert_array_equal(downsample_mask(mask, (2, 2, 2)), downsample_mask(mask, 2))


@pytest.mark.parametrize("method", ["spline", "gaussian", "kspace", "slice"])
def test_a_thick_axis_is_degraded_alone_and_its_affine_lies_over_the_source(method):
    """(1, 1, 4): every line along the first two axes is untouched where the volume does not vary along them."""
    n, f = 32, 4
    line = np.cos(2 * np.pi * 3 * np.arange(n) / n)
    hr = np.broadcast_to(line, (6, 5, n)) * np.linspace(0.5, 1.0, 6)[:, None, None]
    lr = downsample(hr, (1, 1, f), method=method)
    assert lr.shape == (6, 5, n // f)
    # in-plane the volume is untouched: each thick slice is the in-plane image times one number
    np.testing.assert_allclose(lr / lr[-1:, :, :], (hr[:, :, :n // f] / hr[-1:, :, :n // f]), atol=1e-5)
    lr_affine = downsample_affine(OBLIQUE, (1, 1, f))
    np.testing.assert_allclose(voxel_sizes(lr_affine), voxel_sizes(OBLIQUE) * [1, 1, f])
    block_centre = OBLIQUE[:3, :3] @ np.array([2.0, 3.0, f * 5 + (f - 1) / 2]) + OBLIQUE[:3, 3]
    np.testing.assert_allclose(lr_affine[:3, :3] @ np.array([2.0, 3.0, 5.0]) + lr_affine[:3, 3], block_centre)
    np.testing.assert_allclose(upsample_affine(lr_affine, (1, 1, f)), OBLIQUE, atol=1e-12)
    assert upsample(lr, (1, 1, f), order=3).shape == hr.shape


def _slice_cosine(n: int, f: int, k0: int, profile) -> tuple[np.ndarray, np.ndarray]:
    """A cosine of k0 periods along the third axis through the slice method, and the slice centres."""
    hr = np.broadcast_to(np.cos(2 * np.pi * k0 * np.arange(n) / n), (3, 3, n))
    lr = downsample(hr, (1, 1, f), method="slice", profile=profile)[1, 1]
    return lr, f * np.arange(n // f) + (f - 1) / 2


def test_a_rectangular_slice_averages_its_voxels_and_attenuates_by_the_dirichlet_kernel():
    from mrisr.data.degrade import SliceProfile, slice_weights

    n, f, k0 = 64, 4, 3
    weights = slice_weights(n, f, SliceProfile("rect"))
    np.testing.assert_allclose(weights[2, 8:12], 1 / f)  # slice 2 covers fine voxels 8..11, nothing else
    assert weights[2].sum() == pytest.approx(1) and np.count_nonzero(weights[2]) == f
    lr, centres = _slice_cosine(n, f, k0, SliceProfile("rect"))
    w = 2 * np.pi * k0 / n
    gain = np.sin(f * w / 2) / (f * np.sin(w / 2))  # the mean of f samples of a cosine (a Dirichlet kernel)
    np.testing.assert_allclose(lr, gain * np.cos(w * centres), atol=1e-12)
    assert gain < 0.95


def test_a_gaussian_slice_attenuates_by_its_transfer_function_and_a_gap_narrows_it():
    from mrisr.data.degrade import SliceProfile

    n, f, k0 = 128, 4, 9
    w = 2 * np.pi * k0 / n
    for gap in (0.0, 0.5):
        lr, centres = _slice_cosine(n, f, k0, SliceProfile("gaussian", gap))
        sd = f * (1 - gap) / (2 * np.sqrt(2 * np.log(2)))  # FWHM = the slice thickness
        # the profile integrated over each fine voxel: the Gaussian's transfer function times the voxel box's
        gain = np.exp(-0.5 * (sd * w) ** 2) * np.sin(w / 2) / (w / 2)
        inner = slice(3, -3)  # rows cut by the volume's edge are renormalised
        np.testing.assert_allclose(lr[inner], gain * np.cos(w * centres)[inner], atol=1e-6)
        assert gain < 0.9 if gap == 0 else gain > 0.9  # a thinner slice keeps more


def test_the_slice_profile_is_validated():
    from mrisr.data.degrade import SliceProfile

    with pytest.raises(ValueError, match="unknown slice profile 'cone'"):
        SliceProfile("cone")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        SliceProfile("rect", gap=1.0)


def test_a_degrade_section_becomes_one_degradation_and_old_checkpoints_get_the_defaults():
    from mrisr.data.degrade import Degradation, SliceProfile

    assert Degradation.from_config({}) == Degradation(3, "spline", SliceProfile("gaussian", 0.0))
    got = Degradation.from_config({"order": 1, "method": "slice", "slice_profile": "rect", "slice_gap": 0.25})
    assert got == Degradation(1, "slice", SliceProfile("rect", 0.25))
    hr = np.random.default_rng(2).random((4, 4, 8))
    np.testing.assert_array_equal(got.downsample(hr, (1, 1, 4)),
                                  downsample(hr, (1, 1, 4), 1, "slice", SliceProfile("rect", 0.25)))
    with pytest.raises(ValueError, match="unknown degradation 'box'"):
        Degradation.from_config({"method": "box"})
