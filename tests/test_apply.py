"""Apply mode: a trained cascade over a BIDS dataset through the workflow, written as BIDS Derivatives.

The unit tests pin the naming rules and the scan list; the workflow tests
train a one-stage model with the tiny config, build a small BIDS dataset
from the demo generator (two subjects, one with sessions, plus scans that
must fail) and run ``snakemake`` in apply mode.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import TINY_CONFIG, job_counts, run_snakemake
from mrisr.cli import main
from mrisr.config import ApplySettings, ConfigError
from mrisr.data.bids import ScanName, parse_filename, scan_name, scan_names, tree_problems
from mrisr.data.degrade import upsample_affine
from mrisr.data.demo import make_demo_subject, write_demo_bids
from mrisr.data.local import find_bids
from mrisr.io import save_volume, voxel_sizes

DERIVATIVES = Path("results") / "derivatives" / "mrisr"


# --- names and scans --------------------------------------------------------------------

def test_scan_names_follow_bids():
    assert ScanName("01").derivative("sr", "T1w") == "sub-01/anat/sub-01_desc-sr_T1w.nii.gz"
    two = ScanName("02", "1")
    assert two.stem == "sub-02/ses-1/anat/sub-02_ses-1"
    assert two.derivative("brain", "mask", ".json") == "sub-02/ses-1/anat/sub-02_ses-1_desc-brain_mask.json"
    assert ScanName.from_stem(two.stem) == two
    with pytest.raises(ValueError, match="not a scan stem"):
        ScanName.from_stem("sub-02/ses-1/anat/sub-02_ses-2")  # the folder's session is not the file's
    assert scan_name("sub-02_ses-1") == two
    assert scan_name("100307").stem == "sub-100307/anat/sub-100307"
    assert scan_name("scan_01").prefix == "sub-scan01"
    with pytest.raises(ValueError, match="'a-1' and 'a_1' both become sub-a1"):
        scan_names(["a-1", "a_1"])
    with pytest.raises(ValueError, match="letters and digits only"):
        ScanName("0-1")


@pytest.mark.parametrize("path, good", [
    ("sub-01/anat/sub-01_desc-sr_T1w.nii.gz", True),
    ("sub-01/ses-2/anat/sub-01_ses-2_desc-brain_mask.json", True),
    ("sub-01/anat/sub-01_desc-sr_ses-2_T1w.nii.gz", False),  # entities out of the specification's order
    ("sub-01/anat/ses-2_sub-01_T1w.nii.gz", False),  # does not start with sub-
    ("sub-01/anat/sub-01_desc-sr_desc-x_T1w.nii.gz", False),  # an entity twice
    ("sub-01/anat/sub-01_desc-s_r_T1w.nii.gz", False),  # a label that is not alphanumeric
    ("sub-01/anat/sub-01_foo-1_T1w.nii.gz", False),  # no such entity
    ("sub-01/anat/sub-01_desc-sr_T1.nii.gz", False),  # no such suffix
    ("sub-01/anat/sub-01_desc-sr_T1w.mgz", False),  # no such extension
    ("sub-01/anat/sub-02_desc-sr_T1w.nii.gz", False),  # filed under another subject
    ("sub-01/ses-1/anat/sub-01_ses-2_desc-sr_T1w.nii.gz", False),  # filed under another session
    ("sub-01/sub-01_desc-sr_T1w.nii.gz", False),  # no datatype folder
])
def test_file_names_are_checked_against_the_bids_schema(path, good):
    """The BIDS schema's own rules (bidsschematools) decide, not a table kept here."""
    if good:
        found = parse_filename(path)
        assert found["subject"] == "01" and found["suffix"] in ("T1w", "mask") and found["datatype"] == "anat"
    else:
        with pytest.raises(ValueError, match=re.escape(f"{path}: not a BIDS derivative file name and place")):
            parse_filename(path)


def test_tree_check_finds_misfiled_files_and_missing_sidecars(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "mrisr"}]}))
    good = tmp_path / ScanName("01", "a").derivative("sr", "T1w")
    good.parent.mkdir(parents=True)
    good.write_bytes(b"")
    good.with_name(good.name.replace(".nii.gz", ".json")).write_text("{}")
    assert tree_problems(tmp_path) == []
    misfiled = tmp_path / "sub-01" / "anat" / "sub-02_desc-sr_T1w.json"
    misfiled.parent.mkdir(parents=True)
    misfiled.write_text("{}")
    (good.parent / "sub-01_ses-a_desc-sd_T1w.nii.gz").write_bytes(b"")
    problems = tree_problems(tmp_path)
    assert any("sub-01/anat/sub-02_desc-sr_T1w.json: not a BIDS derivative file name and place" in p for p in problems)
    assert any("sub-01_ses-a_desc-sd_T1w.nii.gz: no JSON sidecar" in p for p in problems)
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "x", "DatasetType": "derivative"}))
    problems = tree_problems(tmp_path)
    assert any("no BIDSVersion (required by the BIDS schema)" in p for p in problems)
    assert any("no GeneratedBy (required by the BIDS schema)" in p for p in problems)


def test_the_qc_page_waits_for_a_derivatives_tree_that_passes_the_bids_schema(tmp_path):
    """apply_report checks the whole tree first: a misnamed file stops it, naming the file, before any page."""
    from mrisr.derivatives import apply_report

    (tmp_path / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "mrisr"}]}))
    bad = tmp_path / "sub-01" / "anat" / "sub-01_desc-sr_T1w.nii"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"")
    bad.with_name("sub-01_desc-s_r_T1w.json").write_text("{}")
    page = tmp_path / "apply.html"
    with pytest.raises(ValueError, match=r"2 problem\(s\) with the BIDS schema's rules: .*sub-01_desc-s_r_T1w.json: "
                                         r"not a BIDS derivative file name.*sub-01_desc-sr_T1w.nii: no JSON sidecar"):
        apply_report(None, str(page), derivatives=str(tmp_path))
    assert not page.exists()


def test_bids_sessions_are_scans_of_their_own_in_apply_mode(tmp_path):
    affine = np.eye(4)
    for rel in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
                "sub-02/ses-2/anat/sub-02_ses-2_run-2_T1w.nii.gz", "sub-02/ses-2/anat/sub-02_ses-2_run-1_T1w.nii.gz",
                "sub-03/ses-1/anat/sub-03_ses-2_T1w.nii.gz"):  # filed under the wrong session: skipped
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        save_volume(tmp_path / rel, np.ones((2, 2, 2)), affine)
    scans = find_bids(tmp_path, sessions=True)
    assert {k: Path(v).relative_to(tmp_path).as_posix() for k, v in scans.items()} == {
        "sub-01": "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02_ses-1": "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-02_ses-2": "sub-02/ses-2/anat/sub-02_ses-2_run-1_T1w.nii.gz",  # the first in path order
    }
    assert set(find_bids(tmp_path)) == {"sub-01", "sub-02", "sub-03"}  # training mode: one scan per subject


def test_apply_settings():
    assert not ApplySettings.from_mapping({}).enabled
    settings = ApplySettings.from_mapping({"checkpoints": ["a.pt", "b.pt"]})
    assert settings.enabled and settings.checkpoints == ("a.pt", "b.pt") and settings.qc_panels == 20
    with pytest.raises(ConfigError, match="apply.test_derivatives"):
        ApplySettings.from_mapping({"checkpoints": ["a.pt"], "test_derivatives": True})
    with pytest.raises(ConfigError, match="apply.qc_panels"):
        ApplySettings.from_mapping({"qc_panels": -1})
    with pytest.raises(ConfigError, match="apply.sd_calibration: calibrates apply mode's sd maps; set apply.checkpoints"):
        ApplySettings.from_mapping({"sd_calibration": "results/calibration/sd_calibration.json"})


# --- the workflow in apply mode ------------------------------------------------------------

def tiny_config(path: Path, **changes) -> Path:
    """The tiny test config with one x2 stage (half the tiny cascade's cost) on three subjects (one each to
    train, validate and test), and ``changes``."""
    config = yaml.safe_load(TINY_CONFIG.read_text()) | {"cascade": {"factors": [2]}}
    config["demo"]["n_subjects"] = 3
    # One step and no overlap: whole 4 mm heads are 6x the voxels of the tiny run's test boxes (larger
    # patches are slower: the attention at the coarsest level grows with the square of a patch's voxels).
    config["sampling"] |= {"steps": 1, "overlap": 0.0}
    path.write_text(yaml.safe_dump(config | changes))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-stage x2 model trained by the workflow with the tiny config (4 mm demo subjects: 8 mm LR)."""
    workdir = tmp_path_factory.mktemp("apply_train")
    config = tiny_config(workdir / "train.yaml")
    run_snakemake(workdir, "results/models/stage1/checkpoint.pt", config=config)
    return workdir, config


def demo_scan(index: int, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A whole-head demo subject at 4 mm, block-averaged to 4 * ``block`` mm: a scan as acquired."""
    sub = make_demo_subject(index, seed=3, voxel_size_mm=4.0)
    if block == 1:
        return sub.t1, sub.affine
    shape = [n // block for n in sub.t1.shape]
    t1 = sub.t1[: shape[0] * block, : shape[1] * block, : shape[2] * block]
    t1 = t1.reshape(shape[0], block, shape[1], block, shape[2], block).mean(axis=(1, 3, 5))
    affine = sub.affine @ np.diag([block, block, block, 1.0])
    affine[:3, 3] = sub.affine[:3, :3] @ np.full(3, (block - 1) / 2.0) + sub.affine[:3, 3]
    return t1.astype(np.float32), affine


@pytest.fixture(scope="module")
def bids_dataset(tmp_path_factory):
    """Two subjects (sub-02 with two sessions) at 4 mm; sub-02's third session at 8 mm, too coarse for
    brain extraction; sub-03 a 4D series, which no stage can read."""
    root = tmp_path_factory.mktemp("apply_bids")
    written = write_demo_bids(root, n_subjects=2, voxel_size_mm=4.0, seed=3)
    assert [p.relative_to(root).as_posix() for p in written] == [
        "sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz"]
    coarse = root / "sub-02" / "ses-3" / "anat" / "sub-02_ses-3_T1w.nii.gz"
    coarse.parent.mkdir(parents=True)
    save_volume(coarse, *demo_scan(3, block=2))
    series = root / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    series.parent.mkdir(parents=True)
    t1, affine = demo_scan(4)
    nib.save(nib.Nifti1Image(np.stack([t1, t1], axis=-1), affine), str(series))
    return root


def derivative(workdir: Path, stem: str, desc: str, suffix: str = "T1w", ext: str = ".nii.gz") -> Path:
    name = ScanName.from_stem(stem)
    return workdir / DERIVATIVES / name.derivative(desc, suffix, ext)


GOOD = ("sub-01/anat/sub-01", "sub-02/ses-1/anat/sub-02_ses-1", "sub-02/ses-2/anat/sub-02_ses-2")
COARSE = "sub-02/ses-3/anat/sub-02_ses-3"


@pytest.mark.slow
def test_apply_mode_writes_bids_derivatives_and_a_qc_page(trained, bids_dataset, tmp_path):
    # As the README runs it: in the training run's folder, with the checkpoint's relative path.
    workdir, _ = trained
    checkpoint = workdir / "results" / "models" / "stage1" / "checkpoint.pt"
    trained_bytes = checkpoint.read_bytes()
    config = tiny_config(tmp_path / "apply.yaml", source="local", local={"bids_root": str(bids_dataset)},
                         apply={"checkpoints": ["results/models/stage1/checkpoint.pt"]})

    # A checkpoint that is not there stops the run before any job.
    missing = tiny_config(tmp_path / "missing.yaml", source="local", local={"bids_root": str(bids_dataset)},
                          apply={"checkpoints": [str(tmp_path / "stage1.pt")]})
    refused = run_snakemake(tmp_path, "-n", config=missing, check=False)
    assert refused.returncode != 0 and f"{tmp_path / 'stage1.pt'}: no such checkpoint" in refused.stdout + refused.stderr
    assert not (tmp_path / "results").exists()

    # Two scans fail their own jobs; --keep-going finishes every other scan. No training job is planned:
    # apply mode has no training rules, so the model it reads is never re-made (or deleted on failure).
    first = run_snakemake(workdir, "--keep-going", config=config, check=False)
    out = first.stdout + first.stderr
    assert first.returncode != 0
    assert set(job_counts(out)) == {"fetch", "apply_mask", "apply_scan", "plot_scan", "apply_report",
                                    "describe_derivatives", "all"}
    assert checkpoint.read_bytes() == trained_bytes
    series = bids_dataset / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    fetch_log = (workdir / "results" / "logs" / "fetch" / "sub-03.log").read_text()
    errors = [line for line in fetch_log.splitlines() if "mrisr: error:" in line]
    cli_message = cli_error(series, checkpoint, tmp_path)
    assert len(errors) == 1 and errors[0].endswith(cli_message), (errors, cli_message)
    assert "expected a 3D volume, got shape" in cli_message and "Traceback" not in fetch_log
    coarse_log = (workdir / "results" / "logs" / "apply_mask" / f"{COARSE}.log").read_text()
    assert "mrisr: error: results/raw/sub-02_ses-3/T1w.nii.gz: no brain mask could be estimated at 8x8x8 mm " \
           "voxels: voxels of up to 8 mm are too coarse to tell the brain from the scalp" in coarse_log
    # The acquisition protocol needs no mask: the coarse scan is super-resolved whole-head all the same.
    assert derivative(workdir, COARSE, "sr").is_file() and not derivative(workdir, COARSE, "brain", "mask").exists()
    check_derivatives(workdir, bids_dataset, "results/models/stage1/checkpoint.pt")
    assert "sub-03" in out and not derivative(workdir, "sub-03/anat/sub-03", "sr").exists()

    # Without the two failing scans the run completes: only the QC page and the description were missing.
    shutil.rmtree(bids_dataset / "sub-03")
    shutil.rmtree(bids_dataset / "sub-02" / "ses-3")
    second = run_snakemake(workdir, config=config)
    counts = job_counts(second.stdout + second.stderr)
    assert set(counts) <= {"apply_report", "describe_derivatives", "all"} and counts["apply_report"] == 1
    assert tree_problems(workdir / DERIVATIVES) == []
    check_description(workdir, bids_dataset)
    check_qc_page(workdir)
    again = run_snakemake(workdir, "-n", config=config)
    assert "Nothing to be done" in again.stdout + again.stderr
    lint = run_snakemake(workdir, "--lint", config=config)  # the apply rules exist only in apply mode
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    assert checkpoint.read_bytes() == trained_bytes


def cli_error(scan: Path, checkpoint: Path, tmp_path: Path) -> str:
    """The one line ``mrisr super-resolve`` prints for ``scan`` (without its ``mrisr: error: `` prefix)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["super-resolve", str(scan), "-o", str(tmp_path / "x.nii.gz"), "--model", str(checkpoint),
                     "--quiet"]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrisr: error: ")
    return lines[0].removeprefix("mrisr: error: ")


def check_derivatives(workdir: Path, root: Path, checkpoint: str) -> None:
    """Every derivative of the good scans: names, sidecars, grids over the inputs, units."""
    import hashlib

    sha = hashlib.sha256((workdir / checkpoint).read_bytes()).hexdigest()
    for stem in GOOD:
        name = ScanName.from_stem(stem)
        source = root / name.folder / f"{name.prefix}_T1w.nii.gz"
        scan = nib.load(source)
        files = {desc: derivative(workdir, stem, desc) for desc in ("sr", "sd")}
        files["brain"] = derivative(workdir, stem, "brain", "mask")
        for desc, path in files.items():
            parse_filename(path.relative_to(workdir / DERIVATIVES).as_posix())  # raises on a name that breaks the rules
            sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["Sources"][0] == f"bids:raw:{source.relative_to(root).as_posix()}", sidecar["Sources"]
            image = nib.load(path)
            if desc == "brain":
                assert image.shape == scan.shape and np.allclose(image.affine, scan.affine)
                assert sidecar["Type"] == "Brain" and "estimated from the T1w" in sidecar["Description"]
                assert 0.05 < np.asarray(image.dataobj).mean() < 0.6
                continue
            # The SR grid is twice as fine and lies exactly over the scan: the same box in world space.
            assert image.shape == tuple(2 * n for n in scan.shape)
            np.testing.assert_allclose(image.affine, upsample_affine(scan.affine, 2), atol=1e-6)
            corner = lambda img: img.affine @ np.array([-0.5, -0.5, -0.5, 1.0])  # noqa: E731
            np.testing.assert_allclose(corner(image), corner(scan), atol=1e-6)
            np.testing.assert_allclose(voxel_sizes(image.affine), voxel_sizes(scan.affine) / 2)
            assert sidecar["Checkpoints"] == [{"Path": checkpoint, "SHA256": sha, "Stage": 1, "Factor": 2}]
            assert sidecar["ScaleFactor"] == 2 and sidecar["Sampling"]["n_samples"] == 2
            assert sidecar["Sampling"]["steps"] == 1 and sidecar["Sampling"]["overlap"] == 0.0
            assert sidecar["VoxelSize"] == pytest.approx([2.0, 2.0, 2.0])
            assert sidecar["InputVoxelSize"] == pytest.approx([4.0, 4.0, 4.0])
            assert sidecar["TrainingInputVoxelSize"] == pytest.approx([8.0, 8.0, 8.0])
            assert "differs from the [8.0, 8.0, 8.0] mm the model was trained on" in sidecar["VoxelSizeWarning"]
            # (whether these template-anatomy scans, normalised by their field of view, sit at the level of the
            # tiny run's real-anatomy training data is not the point here: tests/test_cli.py pins the warning)
            assert "IntensityWarning" in sidecar
            assert sidecar["SkullStripped"] is False and sidecar["NormalisationProtocol"] == "acquisition"
        # Back in the scan's units: the SR's bright end is the scan's (the network works on [0, 1]).
        lr = np.asarray(scan.dataobj, dtype=np.float32)
        sr = np.asarray(nib.load(files["sr"]).dataobj, dtype=np.float32)
        assert 0.5 < np.percentile(sr, 99.5) / np.percentile(lr, 99.5) < 1.5
        sd = np.asarray(nib.load(files["sd"]).dataobj)
        assert sd.max() > 0 and sd.min() >= 0
        log = (workdir / "results" / "logs" / "apply_scan" / f"{stem}.log").read_text()
        assert "WARNING" in log and "the model was trained on; results may be poor" in log


def check_description(workdir: Path, root: Path) -> None:
    import subprocess

    description = json.loads((workdir / DERIVATIVES / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "mrisr" and generated["Version"]
    commit = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    assert commit and commit in generated["Description"]
    assert description["SourceDatasets"] == [{"URL": root.as_uri()}]
    assert description["DatasetLinks"] == {"raw": root.as_uri()}


def check_qc_page(workdir: Path) -> None:
    html = (workdir / "results" / "report" / "apply.html").read_text()
    assert "There is no PSNR, SSIM or HFEN here" in html
    assert html.count('alt="thumbnail ') == len(GOOD) and html.count('alt="slice panels ') == len(GOOD)
    assert html.count("differs from the [8.0, 8.0, 8.0] mm the model was trained on") == len(GOOD)
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert "Super-resolution, per scan" in html



@pytest.mark.slow
def test_a_training_runs_test_subjects_become_derivatives_with_one_flag(trained):
    workdir, config = trained
    flagged = tiny_config(workdir / "flag.yaml", apply={"test_derivatives": True})
    splits = (workdir / "results" / "splits.tsv").read_text().splitlines()[1:]
    test_subjects = [line.split("\t")[0] for line in splits if line.endswith("\ttest")]
    targets = [str(derivative(workdir, scan_name(s).stem, desc, suffix).relative_to(workdir)) for s in test_subjects
               for desc, suffix in (("sr", "T1w"), ("sd", "T1w"), ("brain", "mask"))]
    done = run_snakemake(workdir, *targets, str(DERIVATIVES / "dataset_description.json"), config=flagged)
    assert job_counts(done.stdout + done.stderr)["export_derivatives"] == len(test_subjects) == 1
    assert tree_problems(workdir / DERIVATIVES) == []
    for subject in test_subjects:
        stem = scan_name(subject).stem
        sr = nib.load(derivative(workdir, stem, "sr"))
        hr = nib.load(workdir / "results" / "hr" / subject / "T1w.nii.gz")
        assert sr.shape == hr.shape and np.allclose(sr.affine, hr.affine, atol=1e-5)
        ours = np.asarray(nib.load(workdir / "results" / "sr" / subject / "sr.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(sr.dataobj), ours)
        sidecar = json.loads(derivative(workdir, stem, "sr", "T1w", ".json").read_text())
        assert sidecar["Sources"] == [f"mrisr:demo/{subject}?anatomy=real&seed=0&voxel_size_mm=4.0"]
        assert "normalised intensity scale" in sidecar["Description"] and sidecar["ScaleFactor"] == 2
        # the sd map the training run calibrated on its validation subject, and its sidecar says so
        fitted = json.loads((workdir / "results" / "calibration" / "sd_calibration.json").read_text())
        sd_sidecar = json.loads(derivative(workdir, stem, "sd", "T1w", ".json").read_text())
        assert sd_sidecar["SdCalibrationScale"] == pytest.approx(fitted["scale"])
        assert sd_sidecar["SdCalibrationFloor"] == pytest.approx(fitted["floor"])
        assert "fitted on the training run's validation subjects" in sd_sidecar["SdCalibration"]


@pytest.mark.slow
def test_apply_mode_calibrates_sd_maps_as_the_training_run_did_and_no_other_way(trained, tmp_path):
    """apply.sd_calibration: the sd map is the samples' sd through the training run's calibration; one fitted with
    other sampling settings or for another model stops the run before any job, naming the file."""
    from mrisr.config import SamplingOptions
    from mrisr.derivatives import ApplyFiles, apply_scan

    workdir, config = trained
    scale_file = workdir / "results" / "calibration" / "sd_calibration.json"
    run_snakemake(workdir, str(scale_file.relative_to(workdir)), config=config)
    record = json.loads(scale_file.read_text())
    checkpoint = str(workdir / "results" / "models" / "stage1" / "checkpoint.pt")
    sampling = SamplingOptions.from_mapping(yaml.safe_load(config.read_text())["sampling"])
    scan = tmp_path / "scan.nii.gz"
    save_volume(scan, *demo_scan(2))
    sds = {}
    for name, scale in (("raw", None), ("calibrated", str(scale_file))):
        files = ApplyFiles(scan=str(scan), sr=str(tmp_path / f"{name}_sr.nii.gz"), sd=str(tmp_path / f"{name}.nii.gz"),
                           sd_calibration=scale)
        apply_scan(files, [checkpoint], sampling, sources=["bids:raw:scan.nii.gz"], device="cpu")
        sds[name] = np.asarray(nib.load(files.sd).dataobj)
    expected = np.sqrt(record["floor"] ** 2 + (record["scale"] * sds["raw"].astype(np.float64)) ** 2)
    np.testing.assert_allclose(sds["calibrated"], expected, rtol=1e-5, atol=1e-6)
    sidecar = json.loads((tmp_path / "calibrated.json").read_text())
    assert sidecar["SdCalibrationScale"] == pytest.approx(record["scale"])
    assert sidecar["SdCalibrationFile"]["Path"] == str(scale_file)
    assert json.loads((tmp_path / "raw.json").read_text())["SdCalibration"].startswith("none")

    bids = tmp_path / "bids"
    write_demo_bids(bids, n_subjects=1, voxel_size_mm=4.0, seed=3)
    apply = {"checkpoints": ["results/models/stage1/checkpoint.pt"],
             "sd_calibration": "results/calibration/sd_calibration.json"}
    plan = run_snakemake(workdir, "-n", config=tiny_config(
        tmp_path / "ok.yaml", source="local", local={"bids_root": str(bids)}, apply=apply))
    assert job_counts(plan.stdout + plan.stderr)["apply_scan"] == 1
    other = tiny_config(tmp_path / "steps.yaml", source="local", local={"bids_root": str(bids)}, apply=apply)
    changed = yaml.safe_load(other.read_text())
    changed["sampling"]["steps"] = 3
    other.write_text(yaml.safe_dump(changed))
    refused = run_snakemake(workdir, "-n", config=other, check=False)
    assert refused.returncode != 0 and "results/calibration/sd_calibration.json: fitted with other sampling settings: " \
        "steps 1 (now 3)" in refused.stdout + refused.stderr
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(record | {"checkpoints": [{"path": "x.pt", "sha256": "0" * 64}]}))
    other = tiny_config(tmp_path / "forged.yaml", source="local", local={"bids_root": str(bids)},
                        apply=apply | {"sd_calibration": str(forged)})
    refused = run_snakemake(workdir, "-n", config=other, check=False)
    assert refused.returncode != 0 and f"{forged}: fitted for other checkpoints" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_apply_mode_plans_hcp_subjects_with_their_masks(trained, tmp_path):
    """source: hcp in apply mode: each subject a scan named sub-<ID>, its mask the one HCP ships, no training."""
    train_dir, _ = trained
    checkpoint = train_dir / "results" / "models" / "stage1" / "checkpoint.pt"
    config = tiny_config(tmp_path / "hcp.yaml", source="hcp", hcp={"subjects": ["100307", "100408"]},
                         apply={"checkpoints": [str(checkpoint)]})
    plan = run_snakemake(tmp_path, "-n", config=config)
    out = plan.stdout + plan.stderr
    assert job_counts(out) == {"fetch": 2, "apply_mask": 2, "apply_scan": 2, "plot_scan": 2, "apply_report": 1,
                               "describe_derivatives": 1, "all": 1}
    assert "results/derivatives/mrisr/sub-100307/anat/sub-100307_desc-sr_T1w.nii.gz" in out
    mask_job = out[out.index("rule apply_mask:"):].split("\n\n")[0]
    assert "input: results/raw/" in mask_job and "/brainmask.nii.gz" in mask_job, mask_job


@pytest.mark.slow
def test_apply_mode_plans_a_pattern_source_under_bids_names(trained, tmp_path):
    """source: local with a t1 pattern: the IDs become BIDS labels (scan_01 -> sub-scan01), masks estimated."""
    train_dir, _ = trained
    for subject in ("scan_01", "scan-02"):
        save_volume(tmp_path / "scans" / subject / "T1.nii.gz", *demo_scan(0))
    config = tiny_config(tmp_path / "pattern.yaml", source="local",
                         local={"t1": str(tmp_path / "scans" / "{subject}" / "T1.nii.gz")},
                         apply={"checkpoints": [str(train_dir / "results" / "models" / "stage1" / "checkpoint.pt")]})
    plan = run_snakemake(tmp_path, "-n", config=config)
    out = plan.stdout + plan.stderr
    assert job_counts(out)["apply_scan"] == 2 and job_counts(out)["apply_mask"] == 2
    for label in ("scan01", "scan02"):
        assert f"results/derivatives/mrisr/sub-{label}/anat/sub-{label}_desc-sr_T1w.nii.gz" in out
