"""Thick-slice scans: matching a scan's voxel axes to a thick-slice model, applying it, and demo scans."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONFIG
from conftest import synthetic_volumes as _volumes
from mrisr.apply import IDENTITY, Cascade, Scan, apply_cascade, matching_axis_order
from mrisr.config import SamplingOptions
from mrisr.data.degrade import downsample
from mrisr.diffusion.cascade import stage_pair
from mrisr.io import VolumeError, load_volume, voxel_sizes
from mrisr.training.refine import train_predict_and_refine


def test_a_scans_thick_axis_is_matched_to_the_models_by_a_permutation_or_refused_by_name():
    assert matching_axis_order((2.0, 2.0, 8.0), (1, 1, 4), None, "a.nii") == IDENTITY
    assert matching_axis_order((0.9, 0.9, 5.0), (1, 1, 4), (2.0, 2.0, 8.0), "a.nii") == IDENTITY
    assert matching_axis_order((8.0, 2.0, 2.0), (1, 1, 4), None, "a.nii") == (1, 2, 0)  # thick first axis
    assert matching_axis_order((1.0, 4.4, 1.0), (1, 1, 4), None, "a.nii") == (0, 2, 1)  # coronal slices
    # an isotropic model keeps a near-isotropic scan's axes, whatever their small differences
    assert matching_axis_order((1.2, 1.1, 0.9), (2, 2, 2), (2.0, 2.0, 2.0), "a.nii") == IDENTITY
    with pytest.raises(VolumeError, match=r"iso\.nii: voxels of 2x2x2 mm .* x1x1x4 from LR voxels 2x2x8 mm"):
        matching_axis_order((2.0, 2.0, 2.0), (1, 1, 4), (2.0, 2.0, 8.0), "iso.nii")
    with pytest.raises(VolumeError, match=r"thick\.nii: voxels of 1x1x4 mm .* x2 from an isotropic HR"):
        matching_axis_order((1.0, 1.0, 4.0), (2, 2, 2), None, "thick.nii")
    with pytest.raises(VolumeError, match="match no axis order"):  # slices twice as thick, not four times
        matching_axis_order((1.0, 1.0, 2.0), (1, 1, 4), None, "half.nii")


@pytest.fixture(scope="module")
def thick_model(tmp_path_factory):
    """A predict-and-refine stage x4 along the third axis, trained on slice-profile pairs with the tiny config."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["cascade"]["factors"] = [[1, 1, 4]]
    config["degrade"] = {**config["degrade"], "method": "slice"}
    pairs = []
    for seed in range(3):
        hr, mask = _volumes(seed, (12, 16, 16))
        pairs.append(stage_pair(hr, downsample(hr, (1, 1, 4), method="slice"), mask, [[1, 1, 4]], 0,
                                method="slice"))
    out = tmp_path_factory.mktemp("thick")
    return train_predict_and_refine(pairs[:2], pairs[2:], config, 0, out, log=lambda m: None), config


def _thick_scan(path: str = "scan.nii.gz") -> Scan:
    hr, _ = _volumes(7, (12, 16, 16))
    data = 100.0 * downsample(hr, (1, 1, 4), method="slice") + 5.0
    affine = np.diag([2.0, 2.0, 8.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 30.0]
    return Scan(data, np.ones(data.shape, bool), affine, path)


def test_a_scan_with_its_thick_axis_elsewhere_is_transposed_not_resampled_and_back(thick_model):
    checkpoint, config = thick_model
    options = SamplingOptions.from_mapping({**config["sampling"], "estimate": "predictor", "n_samples": 1})
    cascade = Cascade.load([checkpoint], options, torch.device("cpu"))
    scan = _thick_scan()
    direct = apply_cascade(scan, cascade, options, log=lambda m: None, warn=lambda m: None)
    assert direct.sr.shape == (12, 16, 16) and direct.factor == (1, 1, 4) and direct.axis_order == IDENTITY
    np.testing.assert_allclose(voxel_sizes(direct.affine), [2.0, 2.0, 2.0])
    moved = scan.transposed((2, 0, 1))  # the same scan stored with its thick axis first
    lines = []
    out = apply_cascade(moved, cascade, options, log=lines.append, warn=lambda m: None)
    assert out.axis_order == (1, 2, 0) and out.factor == (4, 1, 1)
    assert any("transposed, not resampled" in line for line in lines)
    np.testing.assert_array_equal(out.sr, np.transpose(direct.sr, (2, 0, 1)))
    np.testing.assert_allclose(out.affine, direct.affine[:, [2, 0, 1, 3]])
    iso = Scan(np.ones((12, 16, 16)), np.ones((12, 16, 16), bool), np.diag([2.0, 2.0, 2.0, 1.0]), "iso.nii.gz")
    with pytest.raises(VolumeError, match="iso.nii.gz: voxels of 2x2x2 mm"):
        apply_cascade(iso, cascade, options, log=lambda m: None, warn=lambda m: None)


def test_demo_bids_writes_thick_slice_scans(tmp_path):
    from mrisr.cli import main

    assert main(["demo-bids", str(tmp_path), "--subjects", "1", "--voxel-size", "2", "--thick-slice", "4"]) == 0
    data, affine = load_volume(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    np.testing.assert_allclose(voxel_sizes(affine), [2.0, 2.0, 8.0])
    mask, mask_affine = load_volume(tmp_path / "derivatives" / "masks" / "sub-01_desc-brain_mask.nii.gz")
    assert mask.shape == data.shape and 0.1 < (mask > 0).mean() < 0.6
    np.testing.assert_array_equal(mask_affine, affine)
    sidecar = json.loads((tmp_path / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert sidecar["SliceThickness"] == pytest.approx(8.0) and sidecar["SpacingBetweenSlices"] == pytest.approx(8.0)
    assert main(["demo-bids", str(tmp_path / "x"), "--thick-slice", "4", "--slice-axis", "0", "--voxel-size", "2"]) == 0
    _, affine = load_volume(tmp_path / "x" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    np.testing.assert_allclose(voxel_sizes(affine), [8.0, 2.0, 2.0])
