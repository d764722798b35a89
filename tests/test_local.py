"""source: local - subjects from a pattern or a BIDS folder, validated IDs, inputs only read."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrisr.data.local import LocalScan, find_bids, find_by_pattern, find_scans, validate_local_subject
from mrisr.io import save_volume
from mrisr.pipeline import fetch

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_volume(path: Path, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_volume(path, np.full((6, 7, 8), value, np.float32), AFFINE)
    return path


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_subject_ids_from_paths_are_validated():
    assert validate_local_subject("sub-01") == "sub-01" and validate_local_subject("s_01") == "s_01"
    for bad in ("", "..", ".hidden", "a/b", "a b", "-x", "a.b", "ü", "x" * 65):
        with pytest.raises(ValueError, match="not a usable subject ID"):
            validate_local_subject(bad, "/data/x")


def test_bids_subjects_sessions_and_runs(tmp_path):
    root = tmp_path / "bids"
    write_volume(root / "sub-01/anat/sub-01_T1w.nii.gz")
    write_volume(root / "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz")
    first_session = write_volume(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz")
    first_run = write_volume(root / "sub-03/anat/sub-03_acq-mprage_run-1_T1w.nii")
    write_volume(root / "sub-03/anat/sub-03_acq-mprage_run-2_T1w.nii")
    write_volume(root / "sub-04/anat/sub-04_T2w.nii.gz")  # not a T1w
    write_volume(root / "sub-05/anat/sub-06_T1w.nii.gz")  # filed under another subject
    write_volume(root / "sub-x.y/anat/sub-x.y_T1w.nii.gz")  # not a BIDS label
    write_volume(root / "derivatives/sub-01/anat/sub-01_T1w.nii.gz")
    (root / "dataset_description.json").write_text("{}")
    found = find_bids(root)
    assert list(found) == ["sub-01", "sub-02", "sub-03"]
    assert found["sub-02"] == str(first_session) and found["sub-03"] == str(first_run)
    with pytest.raises(ValueError, match="no such folder"):
        find_bids(tmp_path / "missing")


def test_pattern_with_repeated_placeholder_and_masks(tmp_path):
    for subject in ("s01", "s02"):
        write_volume(tmp_path / subject / f"{subject}_T1.nii.gz")
        write_volume(tmp_path / "masks" / f"{subject}_brain.nii.gz")
    write_volume(tmp_path / "s03" / "s04_T1.nii.gz")  # the two placeholders disagree: not a match
    scans = find_scans({"t1": str(tmp_path / "{subject}" / "{subject}_T1.nii.gz"), "mask": str(tmp_path / "masks" / "{subject}_*.nii.gz")})
    assert list(scans) == ["s01", "s02"]
    assert scans["s02"].mask == str(tmp_path / "masks" / "s02_brain.nii.gz")

    write_volume(tmp_path / "bad id" / "bad id_T1.nii.gz")
    with pytest.raises(ValueError, match=r"'bad id' \(from .*bad id_T1.nii.gz\) is not a usable subject ID"):
        find_by_pattern(str(tmp_path / "{subject}" / "{subject}_T1.nii.gz"))


def test_pattern_errors_are_specific(tmp_path):
    write_volume(tmp_path / "s01" / "a_T1.nii.gz")
    write_volume(tmp_path / "s01" / "b_T1.nii.gz")
    with pytest.raises(ValueError, match="matches two files"):
        find_by_pattern(str(tmp_path / "{subject}" / "*_T1.nii.gz"))
    with pytest.raises(ValueError, match="no {subject} placeholder"):
        find_by_pattern(str(tmp_path / "*" / "a_T1.nii.gz"))
    with pytest.raises(ValueError, match="exactly one of local.t1"):
        find_scans({"t1": None, "bids_root": None})
    with pytest.raises(ValueError, match="exactly one of local.t1"):
        find_scans({"t1": "x/{subject}.nii.gz", "bids_root": "x"})
    with pytest.raises(ValueError, match="no mask for s01"):
        find_scans({"t1": str(tmp_path / "{subject}" / "a_T1.nii.gz"), "mask": str(tmp_path / "{subject}_mask.nii.gz")})
    with pytest.raises(ValueError, match="found no T1w files"):
        find_scans({"t1": str(tmp_path / "{subject}" / "none.nii.gz")})


def test_fetch_copies_local_files_and_never_touches_them(tmp_path):
    t1 = write_volume(tmp_path / "in" / "s01_T1.nii", value=3.0)  # uncompressed: rewritten as .nii.gz
    mask = write_volume(tmp_path / "in" / "s01_mask.nii.gz")  # compressed: copied byte for byte
    for path in (t1, mask):
        path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    before = {p: digest(p) for p in (t1, mask)}
    out = tmp_path / "raw" / "s01"
    config = {"source": "local", "local": {"t1": str(tmp_path / "in" / "{subject}_T1.nii")}}
    fetch("s01", config, str(out / "T1w.nii.gz"), str(out / "brainmask.nii.gz"), LocalScan(str(t1), str(mask)))
    assert {p: digest(p) for p in (t1, mask)} == before
    assert (out / "brainmask.nii.gz").read_bytes() == mask.read_bytes()
    copied = nib.load(out / "T1w.nii.gz")
    np.testing.assert_array_equal(np.asarray(copied.dataobj), np.asarray(nib.load(t1).dataobj))
    np.testing.assert_allclose(copied.affine, AFFINE)
    assert sorted(os.listdir(out)) == ["T1w.nii.gz", "brainmask.nii.gz"]
