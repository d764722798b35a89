"""Brain extraction of a whole-head T1 against a known mask (the head phantom; real-data figures: benchmarks/skullstrip.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mrisr.data.brain_extraction import BrainExtractionError, ExtractionSettings, dice, extract_brain
from mrisr.data.phantom import make_head_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_head_phantom(2, seed=3)


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5) and dice(a, a) == 1.0 and dice(b & False, a & False) == 1.0


def test_the_brain_of_a_whole_head_phantom_is_found(phantom):
    found = extract_brain(phantom.t1, phantom.affine)
    assert dice(found.mask, phantom.mask) > 0.97
    true_ml = phantom.mask.sum() * 8 / 1000
    assert found.volume_ml == pytest.approx(true_ml, rel=0.05)
    assert 3.0 <= found.erosion_mm <= 8.0


def test_intensity_scale_and_a_coarser_working_grid_do_not_matter(phantom):
    scaled = extract_brain(phantom.t1 * 1e-3, phantom.affine)
    assert dice(scaled.mask, phantom.mask) > 0.97
    coarse = extract_brain(phantom.t1, phantom.affine, ExtractionSettings(working_mm=4.0))  # resampled there and back
    assert coarse.mask.shape == phantom.mask.shape
    assert dice(coarse.mask, phantom.mask) > 0.95


def test_an_image_that_is_already_skull_stripped_is_an_error_not_a_wrong_mask(phantom):
    rng = np.random.default_rng(0)
    brain_only = np.where(phantom.mask > 0, phantom.t1, rng.rayleigh(20.0, phantom.t1.shape)).astype(np.float32)
    with pytest.raises(BrainExtractionError, match="could not be separated from the scalp.*need their mask given"):
        extract_brain(brain_only, phantom.affine)
    with pytest.raises(BrainExtractionError, match="constant"):
        extract_brain(np.ones((20, 20, 20), np.float32), phantom.affine)


def test_voxels_too_coarse_to_see_the_scalp_are_refused_not_leaked():
    """Apply mode receives coarse scans. At 4 mm the phantom's brain is found; at 8 mm (its 2x2x2 block
    means) the separation test cannot see the scalp, and the method refuses instead of returning a mask that
    leaks into it (without the refusal, 8 mm masks had Dice 0.83 on the phantom and 0.68 on Colin27:
    benchmarks/skullstrip_lowres.py)."""
    phantom = make_head_phantom(4, seed=3)
    assert dice(extract_brain(phantom.t1, phantom.affine).mask, phantom.mask) > 0.95
    shape = [n // 2 for n in phantom.t1.shape]
    coarse = phantom.t1[: 2 * shape[0], : 2 * shape[1], : 2 * shape[2]]
    coarse = coarse.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    affine = phantom.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(BrainExtractionError, match="voxels of up to 8 mm are too coarse to tell the brain from the scalp"):
        extract_brain(coarse, affine)
