"""`mrisr super-resolve` on a scan the workflow never saw: geometry, units, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from conftest import TINY_CONFIG
from mrisr.cli import main
from mrisr.data.degrade import downsample
from mrisr.data.demo import make_demo_subject
from mrisr.data.skullstrip import skullstrip_with_mask
from mrisr.diffusion.cascade import stage_pair
from mrisr.io import save_volume, voxel_sizes
from mrisr.training.refine import train_predict_and_refine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-stage x2 model, trained for a few steps on two demo subjects (4 mm)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["cascade"]["factors"] = [2]
    pairs = []
    for index in (0, 1):
        sub = make_demo_subject(index, voxel_size_mm=4.0)
        hr = skullstrip_with_mask(sub.t1, sub.mask, sub.affine, multiple=2)
        pairs.append(stage_pair(hr.t1, downsample(hr.t1, 2), hr.mask > 0, [2], 0))
    config["data"] = {"lr_voxel_size_mm": [8.0, 8.0, 8.0]}  # what a workflow's TrainJob.with_training_data records
    out = tmp_path_factory.mktemp("cli_model")
    return train_predict_and_refine(pairs[:1], pairs[1:], {**config, "device": "cpu"}, 0, out, log=lambda m: None)


def _oblique_affine(voxel: float) -> np.ndarray:
    a = np.deg2rad(15.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) * voxel
    affine[:3, 3] = [-60.0, 35.5, -20.25]
    return affine


@pytest.fixture(scope="module")
def unseen_scan(tmp_path_factory):
    """A held-out demo subject at 8 mm in scanner units, on an oblique grid, skull-stripped."""
    sub = make_demo_subject(5, voxel_size_mm=4.0)
    stripped = skullstrip_with_mask(sub.t1, sub.mask, sub.affine, multiple=2)
    lr = downsample(stripped.t1, 2) * 700.0  # arbitrary scanner units
    path = tmp_path_factory.mktemp("scan") / "lr.nii.gz"
    save_volume(path, lr, _oblique_affine(8.0))
    return path


def test_output_overlays_the_input_in_world_space(checkpoint, unseen_scan, tmp_path):
    out, sd = tmp_path / "sr.nii.gz", tmp_path / "sd.nii.gz"
    code = main([
        "super-resolve", str(unseen_scan), "-o", str(out), "--model", str(checkpoint),
        "--steps", "2", "--n-samples", "2", "--eta", "1", "--sd", str(sd), "--variance", "analytic", "--quiet",
    ])
    assert code == 0
    lr_img, sr_img = nib.load(unseen_scan), nib.load(out)
    assert sr_img.shape == tuple(2 * s for s in lr_img.shape)
    np.testing.assert_allclose(voxel_sizes(sr_img.affine), voxel_sizes(lr_img.affine) / 2, rtol=1e-6)
    # resample the SR volume back onto the input grid through the two affines:
    # input voxel i sits at SR continuous index inv(A_sr) A_lr i
    mapping = np.linalg.inv(sr_img.affine) @ lr_img.affine
    coords = mapping[:3, :3] @ np.indices(lr_img.shape).reshape(3, -1) + mapping[:3, 3:4]
    # (linear interpolation at SR index 2i + 0.5 averages the 2x2x2 block the LR voxel covers)
    back = ndimage.map_coordinates(sr_img.get_fdata(), coords, order=1).reshape(lr_img.shape)
    lr = lr_img.get_fdata()
    brain = lr > 0.05 * lr.max()
    assert np.corrcoef(back[brain], lr[brain])[0, 1] > 0.97
    assert 0.8 < back[brain].mean() / lr[brain].mean() < 1.2, "output is in the input's intensity units"
    assert nib.load(sd).shape == sr_img.shape


def test_sd_calibration_calibrates_the_sd_map_and_is_refused_for_another_model_or_sampler(checkpoint, unseen_scan,
                                                                                           tmp_path):
    import contextlib
    import hashlib
    import io
    import json

    from mrisr.cli import build_parser, sampling_options

    base = ["super-resolve", str(unseen_scan), "--model", str(checkpoint), "--steps", "2", "--n-samples", "2",
            "--eta", "1", "--quiet"]
    options = sampling_options(build_parser().parse_args(base + ["-o", "x.nii.gz"]))
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    scale = tmp_path / "sd_calibration.json"
    record = {"floor": 0.01, "scale": 2.5, "sampling": options.to_dict(),
              "checkpoints": [{"path": "stage1.pt", "sha256": sha}]}
    scale.write_text(json.dumps(record))
    raw, calibrated = tmp_path / "raw.nii.gz", tmp_path / "calibrated.nii.gz"
    assert main(base + ["-o", str(tmp_path / "a.nii.gz"), "--sd", str(raw)]) == 0
    assert main(base + ["-o", str(tmp_path / "b.nii.gz"), "--sd", str(calibrated), "--sd-calibration", str(scale)]) == 0
    expected = np.sqrt(0.01 ** 2 + (2.5 * nib.load(raw).get_fdata()) ** 2)  # sqrt(floor^2 + (scale sd)^2)
    np.testing.assert_allclose(nib.load(calibrated).get_fdata(), expected, rtol=1e-5)

    def error(*extra: str) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(base + ["-o", str(tmp_path / "never.nii.gz"), *extra]) == 2
        assert not (tmp_path / "never.nii.gz").exists()
        return err.getvalue()

    assert "--sd-calibration calibrates the sd map: give --sd too" in error("--sd-calibration", str(scale))
    sd = ["--sd", str(tmp_path / "sd.nii.gz"), "--sd-calibration", str(scale)]
    assert f"{scale}: fitted with other sampling settings: steps 2 (now 3)" in error(*sd, "--steps", "3")
    scale.write_text(json.dumps(record | {"checkpoints": [{"path": "stage1.pt", "sha256": "0" * 64}]}))
    assert f"{scale}: fitted for other checkpoints than {checkpoint}" in error(*sd)
    scale.write_text(json.dumps({k: v for k, v in record.items() if k != "checkpoints"}))
    assert f"{scale}: records no checkpoints" in error(*sd)
    scale.write_text(json.dumps(record | {"floor": -0.1}))
    assert f"{scale}: the sd calibration's floor must be a number >= 0, not -0.1" in error(*sd)


def _bad(tmp_path: Path, name: str, data, affine=np.eye(4) * 8) -> Path:
    path = tmp_path / name
    affine = np.array(affine, float)
    affine[3, 3] = 1
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(["super-resolve", *map(str, argv), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("missing.nii.gz", None, "missing.nii.gz: no such file"),
        ("series.nii.gz", lambda: np.ones((8, 8, 8, 3)), r"series.nii.gz: expected a 3D volume, got shape \(8, 8, 8, 3\)"),
        ("nan.nii.gz", lambda: np.where(np.indices((8, 8, 8))[0] == 3, np.nan, 1.0), "nan.nii.gz: 64 voxels are NaN or infinite"),
        ("empty.nii.gz", lambda: np.zeros((8, 8, 8)), "empty.nii.gz: the volume is empty"),
        ("constant.nii.gz", lambda: np.full((8, 8, 8), 5.0), "constant.nii.gz: the volume is constant"),
    ],
)
def test_bad_scans_give_one_line_naming_the_file_and_leave_nothing(checkpoint, tmp_path, capsys, name, make, message):
    path = tmp_path / name if make is None else _bad(tmp_path, name, make())
    out = tmp_path / "out" / "sr.nii.gz"
    code, err = _run(capsys, path, "-o", out, "--model", checkpoint)
    assert code == 2
    assert err.startswith("mrisr: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not out.exists() and not (tmp_path / "out").exists()


def test_truncated_gzip_is_a_clear_error(checkpoint, unseen_scan, tmp_path, capsys):
    cut = tmp_path / "cut.nii.gz"
    raw = unseen_scan.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    code, err = _run(capsys, cut, "-o", tmp_path / "sr.nii.gz", "--model", checkpoint)
    assert code == 2 and "cut.nii.gz: cannot read as NIfTI" in err


def test_truncated_start_needs_the_sample_mean(checkpoint, unseen_scan, tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    code, err = _run(capsys, unseen_scan, "-o", out, "--model", checkpoint, "--start-t", "100")
    assert code == 2 and "--estimate: 'posterior_mean' needs the reverse process to start from pure noise" in err
    assert "(--start-t: null)" in err and not out.exists()


def test_corrupt_checkpoint_is_a_clear_error(unseen_scan, tmp_path, capsys, checkpoint):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoint.read_bytes()[:4096])
    code, err = _run(capsys, unseen_scan, "-o", tmp_path / "sr.nii.gz", "--model", bad)
    assert code == 2 and "bad.pt: not a readable checkpoint" in err
    assert not (tmp_path / "sr.nii.gz").exists()


def test_single_volume_4d_and_tiny_volumes_work(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    small = _bad(tmp_path, "small.nii.gz", rng.random((5, 6, 3, 1)) + 0.5)  # smaller than a patch, 4D with one volume
    out = tmp_path / "sr.nii.gz"
    code, err = _run(capsys, small, "-o", out, "--model", checkpoint, "--steps", "1")
    assert code == 0, err
    assert nib.load(out).shape == (10, 12, 6)


def test_voxel_size_far_from_training_warns_with_numbers(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(1)
    scan = _bad(tmp_path, "fine.nii.gz", rng.random((8, 8, 8)) + 0.5, affine=np.eye(4) * 2)
    code, err = _run(capsys, scan, "-o", tmp_path / "sr.nii.gz", "--model", checkpoint, "--steps", "1")
    assert code == 0
    assert "fine.nii.gz: voxel size [2.0, 2.0, 2.0] mm differs from the [8.0, 8.0, 8.0] mm" in err


def test_help_for_every_subcommand():
    for argv in (["--help"], ["super-resolve", "--help"], ["hcp-subjects", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "mrisr.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: mrisr" in proc.stdout


def test_the_checkpoints_protocol_decides_whether_the_head_is_kept(checkpoint, tmp_path):
    """A cascade trained with the acquisition protocol takes the whole head and scales it by its field of
    view; one trained with the masked protocol (checkpoints from before the protocol existed are) removes
    everything outside --mask."""
    import torch

    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["degrade"] = {**payload["config"]["degrade"], "protocol": "acquisition"}
    acquisition = tmp_path / "acquisition.pt"
    torch.save(payload, acquisition)
    sub = make_demo_subject(5, voxel_size_mm=4.0)  # a whole head: the demo subjects have one
    t1, mask = sub.t1[: sub.t1.shape[0] // 2 * 2, : sub.t1.shape[1] // 2 * 2, : sub.t1.shape[2] // 2 * 2], \
        sub.mask[: sub.t1.shape[0] // 2 * 2, : sub.t1.shape[1] // 2 * 2, : sub.t1.shape[2] // 2 * 2]
    lr, lr_mask = downsample(t1, 2), downsample(mask.astype(np.float32), 2) > 0.5
    scan, mask_file = tmp_path / "head.nii.gz", tmp_path / "mask.nii.gz"
    save_volume(scan, lr, _oblique_affine(8.0))
    save_volume(mask_file, lr_mask.astype(np.uint8), _oblique_affine(8.0), dtype=np.uint8)
    outside = ~(ndimage.zoom(lr_mask.astype(np.float32), 2, order=0) > 0.5)
    for model, head_kept in ((acquisition, True), (checkpoint, False)):
        out = tmp_path / f"{model.stem}_sr.nii.gz"
        assert main(["super-resolve", str(scan), "-o", str(out), "--model", str(model), "--mask", str(mask_file),
                     "--steps", "1", "--quiet"]) == 0
        sr = nib.load(out).get_fdata()
        head = np.abs(sr[outside]).mean() / np.abs(sr[~outside]).mean()
        assert (head > 0.1) if head_kept else (head < 0.02), (model.stem, head)


def test_unset_sampling_options_take_the_runs_settings_and_a_bad_settings_file_is_named(tmp_path, capsys):
    from mrisr.cli import build_parser, sampling_options
    from mrisr.pipeline import read_sampling_settings, run_sampling_settings, write_sampling_settings

    models = tmp_path / "results" / "models"
    checkpoints = [str(models / "stage1" / "checkpoint.pt"), str(models / "stage2" / "checkpoint.pt")]
    assert run_sampling_settings(checkpoints) is None
    write_sampling_settings({"steps": 7, "n_samples": 3, "estimate": "predictor"}, str(models / "sampling.json"))
    found = run_sampling_settings(checkpoints)
    assert found == (models / "sampling.json").resolve()
    run = read_sampling_settings(found)
    args = build_parser().parse_args(["super-resolve", "in.nii.gz", "-o", "x.nii.gz", "--model", *checkpoints,
                                      "--n-samples", "2"])
    options = sampling_options(args, run)
    assert (options.steps, options.estimate, options.n_samples) == (7, "predictor", 2)  # the option wins
    assert sampling_options(args).steps != 7  # without the run's settings: the schema's default

    (models / "sampling.json").write_text('{"steps": 7}')
    code = main(["super-resolve", "in.nii.gz", "-o", str(tmp_path / "x.nii.gz"), "--model", *checkpoints])
    assert code == 2 and f"{(models / 'sampling.json').resolve()}: not a sampling settings file" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_a_scan_whose_brain_sits_far_below_the_training_level_gets_a_warning(checkpoint, tmp_path, capsys):
    """A whole-head 4 mm scan whose brain, once normalised, sits at the model's training level is not warned
    about; the same scan with bright specks in 2 % of its brain (its 99.5th percentile, and so its scale, 3x
    higher: the brain at a third of the level) is, naming the file and both levels."""
    import torch

    from mrisr.data.protocol import lr_tissue_level, normalise_scan

    sub = make_demo_subject(5, voxel_size_mm=4.0)
    normalised, _ = normalise_scan(sub.t1, sub.mask > 0, sub.affine, 99.5, "x", "acquisition", "brain")
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["degrade"] = {**payload["config"]["degrade"], "protocol": "acquisition"}
    payload["config"]["skullstrip"] = {**payload["config"]["skullstrip"], "normalise": "brain"}
    payload["config"]["data"] = {**payload["config"]["data"],
                                 "lr_brain_median": lr_tissue_level(normalised, sub.affine)}  # as training records it
    model = tmp_path / "model.pt"
    torch.save(payload, model)
    plain, specked = tmp_path / "plain.nii.gz", tmp_path / "specked.nii.gz"
    save_volume(plain, sub.t1, sub.affine)
    data = sub.t1.copy()
    brain = np.argwhere(sub.mask > 0)
    spots = brain[np.random.default_rng(0).choice(len(brain), size=len(brain) // 50, replace=False)]
    data[tuple(spots.T)] = 3.0 * data.max()
    save_volume(specked, data, sub.affine)
    fast = ("--estimate", "predictor", "--n-samples", "1")  # g alone: the warning does not depend on the estimate
    code, err = _run(capsys, plain, "-o", tmp_path / "plain_sr.nii.gz", "--model", model, *fast)
    assert code == 0 and "median intensity" not in err
    code, err = _run(capsys, specked, "-o", tmp_path / "specked_sr.nii.gz", "--model", model, *fast)
    assert code == 0
    assert re.search(r"specked\.nii\.gz: normalised, its brain's median intensity is 0\.\d\d, against 0\.\d\d in "
                     r"the model's training data", err), err
