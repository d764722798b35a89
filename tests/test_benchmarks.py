"""Benchmark scripts that run in seconds: the GPU check (--smoke on the CPU), the sd map calibration table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_gpu_check_smoke_measures_every_section(tmp_path):
    out = tmp_path / "gpu_check.tsv"
    subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                   check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=300,
                   capture_output=True)
    with open(out, newline="") as fh:
        rows = {(r["section"], r["measure"]): r["value"] for r in csv.DictReader(fh, delimiter="\t")}
    assert {section for section, _ in rows} == {"device", "train", "bf16", "volume", "sampling", "inference"}
    assert 0 <= float(rows["train", "share_of_time_waiting_for_patches"]) <= 100
    assert float(rows["sampling", "ddim_2_steps_1_sample_seconds"]) > 0
    assert float(rows["train", "seconds_per_step"]) > 0
    assert int(rows["train", "parameters"]) > 0
    # the smoke config samples 2 steps x 2 samples: four passes of the network over the volume
    assert rows["volume", "passes_per_volume (2 steps x 2 samples)"] == "4"
    assert float(rows["volume", "one_pass_patch_16_batch_2"]) > 0
    assert float(rows["bf16", "relative_l2_vs_float32"]) >= 0
    for side in (16, 24):
        assert float(rows["inference", f"patch_{side}_batch_1_seconds"]) > 0


def test_sd_calibration_table_of_the_tiny_run(tiny_run, tmp_path):
    """benchmarks/sd_calibration.py refits each calibration on the validation subject as the workflow does: its
    default reproduces the workflow's file, the validation rows are calibrated by construction, and the test row's
    calibrated RMS sd is that of the workflow's sd.nii.gz."""
    import nibabel as nib
    import numpy as np

    out = tmp_path / "sd_calibration.tsv"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "sd_calibration.py"), "--results",
                    str(tiny_run / "results"), "--out", str(out)], check=True, capture_output=True)
    with open(out, newline="") as fh:
        rows = {(r["method"], r["split"]): r for r in csv.DictReader(fh, delimiter="\t")}
    assert {m for m, _ in rows} == {"none", "floor_scale", "scale"}
    res = tiny_run / "results"
    fitted = json.loads((res / "calibration" / "sd_calibration.json").read_text())
    assert float(rows["floor_scale", "val"]["scale"]) == pytest.approx(fitted["scale"], rel=1e-3)
    assert float(rows["floor_scale", "val"]["floor"]) == pytest.approx(fitted["floor"], abs=1e-5)
    for method in ("floor_scale", "scale"):
        assert float(rows[method, "val"]["ratio"]) == pytest.approx(1.0, abs=2e-3)
    test = rows["floor_scale", "test"]
    sd = nib.load(res / "sr" / test["subject"] / "sd.nii.gz").get_fdata()
    mask = nib.load(res / "hr" / test["subject"] / "brainmask.nii.gz").get_fdata() > 0
    assert float(test["rms_sd"]) == pytest.approx(np.sqrt(np.mean(sd[mask] ** 2)), rel=2e-3)


def test_slurm_submissions_count_group_jobs_once_and_local_rules_never():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from dag_scale import local_rules, slurm_submissions

    assert {"split", "report", "plot_slices", "calibrate_sd", "all"} <= local_rules()
    assert not {"train_stage", "super_resolve", "fetch"} & local_rules()
    printout = "\n".join([
        "[Thu Dec  3 10:25:08 2026] Group job preprocess (jobs in lexicogr. order):", "",
        "    [Thu Dec  3 10:25:08 2026]", "    rule fetch:", "    rule skullstrip:",
        "[Thu Dec  3 10:25:08 2026] Group job preprocess (jobs in lexicogr. order):", "    rule fetch:",
        "[Thu Dec  3 10:25:09 2026]", "rule train_stage:", "[Thu Dec  3 10:25:09 2026]", "rule report:",
    ])
    assert slurm_submissions(printout) == {"preprocess": 2, "train_stage": 1}
