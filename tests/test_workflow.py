"""The Snakemake workflow: DAG, lint, a tiny end-to-end run, and re-running one stage."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, job_counts, run_snakemake, snakemake_cmd
from mrisr.data.splits import read_splits
from mrisr.io import voxel_sizes

pytestmark = pytest.mark.slow


def test_default_config_dry_run_and_lint(tmp_path):
    proc = run_snakemake(tmp_path, "-n", config=REPO / "config" / "config.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["fetch"] == 8 and counts["train_stage"] == 1 and counts["report"] == 1
    lint = run_snakemake(tmp_path, "--lint", config=REPO / "config" / "config.yaml")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def test_config_typo_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "tests" / "data" / "tiny.yaml").read_text().replace("schedule: cosine", "schedule: cosin"))
    with pytest.raises(AssertionError, match="cosin"):
        run_snakemake(tmp_path, "-n", config=bad)


def test_end_to_end_outputs(tiny_run):
    res = tiny_run / "results"
    splits = read_splits(res / "splits.tsv")
    test_subjects = sorted(s for s, v in splits.items() if v == "test")
    assert len(splits) == 4 and len(test_subjects) == 1
    for subject in splits:
        hr = nib.load(res / "hr" / subject / "T1w_brain.nii.gz")
        lr = nib.load(res / "lr" / subject / "x4.nii.gz")
        assert lr.shape == tuple(s // 4 for s in hr.shape)
        np.testing.assert_allclose(voxel_sizes(lr.affine), 4 * voxel_sizes(hr.affine))
    for stage in (1, 2):
        assert (res / "models" / f"stage{stage}" / "checkpoint.pt").stat().st_size > 0
        assert (res / "models" / f"stage{stage}" / "loss.png").stat().st_size > 0
    for subject in test_subjects:
        hr = nib.load(res / "hr" / subject / "T1w_brain.nii.gz")
        sr = nib.load(res / "sr" / subject / "sr.nii.gz")
        stage1 = nib.load(res / "sr" / subject / "stage1.nii.gz")
        assert sr.shape == hr.shape
        np.testing.assert_allclose(sr.affine, hr.affine, atol=1e-5)
        assert stage1.shape == tuple(s // 2 for s in hr.shape), "stage 1 works on the intermediate grid"
        np.testing.assert_allclose(voxel_sizes(stage1.affine), 2 * voxel_sizes(hr.affine))
        sd = nib.load(res / "sr" / subject / "sd.nii.gz")  # n_samples: 2 in the tiny config
        assert sd.shape == hr.shape and sd.get_fdata().max() > 0
        with open(res / "metrics" / f"{subject}_calibration.tsv", newline="") as fh:
            bins = list(csv.DictReader(fh, delimiter="\t"))
        assert len(bins) == 10 and all(math.isfinite(float(b["rmse"])) for b in bins)
    with open(res / "metrics.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {(r["subject"], r["method"]) for r in rows} == {(s, m) for s in test_subjects for m in ("spline", "sr")}
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1
    html = (res / "report" / "index.html").read_text()
    assert "PSNR" in html and "data range = 1" in html and html.count("data:image/png;base64,") >= 2
    assert not list(res.rglob(".*.nii.gz.*")), "no temporary files left behind"


def test_rerun_is_a_no_op_and_forcerun_reruns_exactly_the_stage_and_its_dependents(tiny_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    nothing = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr

    res = workdir / "results"
    hr_file = next((res / "hr").glob("*/T1w_brain.nii.gz"))
    hr_mtime = hr_file.stat().st_mtime_ns
    proc = run_snakemake(workdir, "--forcerun", "make_lr")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts == {
        "make_lr": 4, "train_stage": 2, "super_resolve": 1, "baseline": 1,
        "evaluate": 1, "collect_metrics": 1, "plot_slices": 1, "report": 1, "all": 1,
    }
    assert hr_file.stat().st_mtime_ns == hr_mtime, "upstream outputs are not rewritten"

    # A deleted file is rebuilt by naming it as the target (Snakemake does not
    # rebuild a missing intermediate whose dependents are up to date). The
    # stage is deterministic, so the file comes back byte for byte and
    # Snakemake, which compares checksums of newer inputs, re-runs nothing else.
    spline = next((res / "baseline").glob("*/spline.nii.gz"))
    before = spline.read_bytes()
    spline.unlink()
    proc = run_snakemake(workdir, str(spline.relative_to(workdir)))
    assert job_counts(proc.stdout + proc.stderr) == {"baseline": 1}
    assert spline.read_bytes() == before
    proc = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_same_config_and_seed_reproduce_splits_lr_volumes_and_metrics(tiny_run, tmp_path):
    run_snakemake(tmp_path)
    a, b = tiny_run / "results", tmp_path / "results"
    assert (a / "splits.tsv").read_bytes() == (b / "splits.tsv").read_bytes()
    for lr in sorted(a.glob("lr/*/*.nii.gz")):
        np.testing.assert_array_equal(nib.load(lr).get_fdata(), nib.load(b / lr.relative_to(a)).get_fdata())
    assert (a / "metrics.tsv").read_text() == (b / "metrics.tsv").read_text()


def test_a_run_killed_mid_job_restarts_and_completes_without_stale_files(tiny_run, tmp_path):
    """SIGKILL the whole Snakemake process group while a training job runs, then restart."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        snakemake_cmd(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env, start_new_session=True,
    )
    log = tmp_path / "results" / "logs" / "train_stage" / "stage1.log"
    deadline = time.monotonic() + 600
    while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before training started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results" / "report" / "index.html").exists()

    run_snakemake(tmp_path, "--unlock")  # a killed Snakemake leaves its lock behind
    run_snakemake(tmp_path)
    res = tmp_path / "results"
    assert (res / "report" / "index.html").exists()
    assert not [p for p in res.rglob(".*") if p.is_file()], "no temporary half-files remain"
    assert (res / "metrics.tsv").read_text() == (tiny_run / "results" / "metrics.tsv").read_text()
