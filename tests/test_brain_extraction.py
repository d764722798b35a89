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
