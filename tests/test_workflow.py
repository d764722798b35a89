"""The Snakemake workflow: DAG, lint, a tiny end-to-end run, and re-running one stage."""

from __future__ import annotations

import csv
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import nibabel as nib
import numpy as np

from conftest import (
    REPO, TINY_CONFIG, assert_same_model, check_tiny_outputs, job_counts, run_snakemake, snakemake_cmd,
    train_reference,
)
from mrisr.data.degrade import downsample_affine
from mrisr.io import load_volume

pytestmark = pytest.mark.slow


def test_default_config_dry_run_and_lint(tmp_path):
    proc = run_snakemake(tmp_path, "-n", config=REPO / "config" / "config.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["fetch"] == 12 and counts["train_stage"] == 1 and counts["report"] == 1  # the 12 real brains
    assert counts["train_predictor"] == 1 and counts["predict"] == 1  # predict, then refine: one job per stage
    lint = run_snakemake(tmp_path, "--lint", config=REPO / "config" / "config.yaml")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def _overlap(folder, include: str) -> bool:
    """Run two ready jobs of 2 threads each, after one that runs alone, on 2 cores: do they overlap?"""
    folder.mkdir()
    (folder / "Snakefile").write_text(
        include +
        'rule all:\n    input: "a", "b"\n'
        'rule alone:\n    output: "common"\n    threads: 2\n    shell: "touch {output}"\n'
        'rule pair:\n    input: "common"\n    output: "{x}"\n    wildcard_constraints: x="[ab]"\n    threads: 2\n'
        '    shell: "date +%s.%N > {output}.start; sleep 1; date +%s.%N > {output}.end; touch {output}"\n'
    )
    exe = Path(sys.executable).with_name("snakemake")
    subprocess.run([str(exe), "--cores", "2", "--quiet"], cwd=folder, check=True, capture_output=True)
    a, b = ([float((folder / f"{x}.{e}").read_text()) for e in ("start", "end")] for x in "ab")
    return not (a[1] <= b[0] or b[1] <= a[0])


def test_jobs_that_each_take_every_core_run_one_at_a_time(tmp_path):
    """With workflow/rules/scheduling.smk, Snakemake keeps to --cores: two jobs of 2 threads on 2 cores
    run one after the other, even after a job that ran alone. Without it, a Snakemake with the bug it
    mends (issue #3913) runs them at once: when that stops, the mend has become a no-op to remove."""
    from snakemake.scheduling import job_scheduler

    assert not _overlap(tmp_path / "mended", f'include: "{REPO / "workflow" / "rules" / "scheduling.smk"}"\n')
    buggy = "if len(jobs) == 1:\n                    return self.job_selector_greedy(" in inspect.getsource(
        job_scheduler.JobScheduler)
    assert _overlap(tmp_path / "plain", "") == buggy


def test_config_typo_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "tests" / "data" / "tiny.yaml").read_text().replace("schedule: cosine", "schedule: cosin"))
    with pytest.raises(AssertionError, match="cosin"):
        run_snakemake(tmp_path, "-n", config=bad)
    moved = tmp_path / "moved.yaml"  # a key of an older version: named with its new place
    moved.write_text(yaml.safe_dump({"sampling": {"calibration_subjects": 2}}))
    with pytest.raises(AssertionError, match=r"sampling.calibration_subjects: moved to calibration.subjects; write it "
                                             r"as calibration: \{subjects: 2\}"):
        run_snakemake(tmp_path, "-n", config=moved)


def test_sd_calibration_can_be_turned_off(tmp_path):
    """calibration.subjects: 0 plans no validation inference and writes the samples' sd as sd.nii.gz."""
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(tiny | {"calibration": {"subjects": 0}}))
    plan = run_snakemake(tmp_path / "run", "-n", config=off)
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts["super_resolve"] == 1 and counts["evaluate"] == 1
    assert not {"fit_sd_calibration", "calibrate_sd"} & set(counts)
    assert "results/calibration/" not in plan.stdout + plan.stderr  # no validation subject super-resolved
    assert "sd_uncalibrated" not in plan.stdout + plan.stderr and "sd.nii.gz" in plan.stdout + plan.stderr


def test_a_thick_slice_config_makes_thick_slice_pairs_for_a_per_axis_cascade(tmp_path):
    """cascade.factors [[1, 1, 2], [1, 1, 2]] with the slice degradation: the LR (x1x1x4) has 4x thicker slices
    along the third axis, lies over the HR, and each stage's training pair is on its own grid."""
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    thick = tmp_path / "thick.yaml"
    thick.write_text(yaml.safe_dump(tiny | {"degrade": tiny["degrade"] | {"method": "slice", "slice_gap": 0.2},
                                            "cascade": {"factors": [[1, 1, 2], [1, 1, 2]]}}))
    run_snakemake(tmp_path, "results/lr/demo01/x1x1x4.nii.gz", "results/cache/stage1/demo01/cache.json",
                  "results/cache/stage2/demo01/cache.json", config=thick)
    res = tmp_path / "results"
    hr, hr_affine = load_volume(res / "hr" / "demo01" / "T1w.nii.gz")
    lr, lr_affine = load_volume(res / "lr" / "demo01" / "x1x1x4.nii.gz")
    assert lr.shape == (hr.shape[0], hr.shape[1], hr.shape[2] // 4)
    np.testing.assert_allclose(lr_affine, downsample_affine(hr_affine, (1, 1, 4)), atol=1e-4)
    for stage, side in ((1, hr.shape[2] // 2), (2, hr.shape[2])):
        cond = np.load(res / "cache" / f"stage{stage}" / "demo01" / "cond.npy", mmap_mode="r")
        assert cond.shape == (hr.shape[0], hr.shape[1], side)


def test_end_to_end_outputs(tiny_run):
    check_tiny_outputs(tiny_run)


def test_the_cli_gives_the_workflows_volumes_with_the_runs_sampling_settings(tiny_run, tmp_path):
    """``mrisr super-resolve`` with no sampling option, on a test subject's LR, samples as the run did
    (results/models/sampling.json: 3 DDIM steps, 2 samples, 16-voxel patches, not the schema's defaults)
    and writes the workflow's sr.nii.gz and, with the run's calibration and no option retyped, its sd.nii.gz."""
    from mrisr.cli import main

    res = tiny_run / "results"
    splits = (res / "splits.tsv").read_text().splitlines()[1:]
    subject = next(line.split("\t")[0] for line in splits if line.endswith("\ttest"))
    (lr,) = (res / "lr" / subject).glob("x*.nii.gz")
    checkpoints = sorted(str(p) for p in (res / "models").glob("stage*/checkpoint.pt"))
    out, sd = tmp_path / "sr.nii.gz", tmp_path / "sd.nii.gz"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the super_resolve job ran: one thread, so the same float reductions
    try:
        rc = main(["super-resolve", str(lr), "-o", str(out), "--normalised", "--model", *checkpoints,
                   "--sd", str(sd), "--sd-calibration", str(res / "calibration" / "sd_calibration.json"),
                   "--device", "cpu", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    trained = torch.load(checkpoints[0], weights_only=True)["config"]["data"]  # what the job read off its caches
    assert trained["lr_voxel_size_mm"] == [16.0] * 3  # (no brain to read a tissue level from at 16 mm)
    for ours, theirs in ((out, res / "sr" / subject / "sr.nii.gz"), (sd, res / "sr" / subject / "sd.nii.gz")):
        a, b = nib.load(ours), nib.load(theirs)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)


def test_rerun_is_a_no_op_and_forcerun_reruns_exactly_the_stage_and_its_dependents(tiny_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    nothing = run_snakemake(workdir, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr

    res = workdir / "results"
    downstream = {"super_resolve": 2, "fit_sd_calibration": 1, "calibrate_sd": 1,
                  "evaluate": 1, "collect_metrics": 1, "plot_slices": 1, "report": 1, "all": 1}
    plan = run_snakemake(workdir, "-n", "--forcerun", "make_lr")  # planned from an early stage: nearly everything
    assert job_counts(plan.stdout + plan.stderr) == {
        "make_lr": 4, "cache_stage": 6, "train_predictor": 2, "predict": 2, "train_stage": 2, "baseline": 1,
        **downstream}
    # run from a later stage (fewer jobs to wait for): it and its dependents, nothing upstream rewritten
    upstream = [next((res / "hr").glob("*/T1w.nii.gz")), next((res / "cache").glob("stage*/*/cache.json")),
                res / "models" / "stage1" / "predictor.pt"]
    mtimes = [path.stat().st_mtime_ns for path in upstream]
    proc = run_snakemake(workdir, "--forcerun", "predict")
    assert job_counts(proc.stdout + proc.stderr) == {"predict": 2, "train_stage": 2, **downstream}
    assert [path.stat().st_mtime_ns for path in upstream] == mtimes, "upstream outputs are not rewritten"

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


def test_a_compared_model_is_trained_scored_and_reported_without_touching_the_main_one(tiny_run, tmp_path):
    """compare: {triplanar2d: ...} added to a finished run trains and scores only the new model."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    config = yaml.safe_load(TINY_CONFIG.read_text()) | yaml.safe_load((REPO / "config" / "compare_triplanar2d.yaml").read_text())
    both = tmp_path / "compare.yaml"
    both.write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, config=both)
    assert job_counts(proc.stdout + proc.stderr) == {
        "train_stage": 2, "super_resolve": 1, "evaluate": 1, "collect_metrics": 1, "report": 1, "all": 1}
    with open(workdir / "results" / "metrics.tsv", newline="") as fh:
        methods = {(r["subject"], r["method"]) for r in csv.DictReader(fh, delimiter="\t")}
    subject = next(s for s, m in methods if m == "sr")
    assert methods == {(subject, m) for m in ("spline", "sr", "sr_predictor", "sr_sample", "sr_triplanar2d")}
    ckpt = torch.load(workdir / "results" / "compare" / "triplanar2d" / "models" / "stage1" / "checkpoint.pt",
                      weights_only=True)
    assert ckpt["config"]["model"]["variant"] == "triplanar2d"
    html = (workdir / "results" / "report" / "index.html").read_text()
    assert 'id="models-compared"' in html and "triplanar2d" in html
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config | {"compare": {"x": {"model": {"variantt": "triplanar2d"}}}}))
    proc = run_snakemake(workdir, "-n", config=bad, check=False)
    assert proc.returncode != 0 and "compare.x.model.variantt: no such model setting" in proc.stdout + proc.stderr


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
    # training resumed from its last checkpoint: the same model up to the order of float sums
    killed, straight = (
        {(r["subject"], r["method"]): r for r in csv.DictReader(open(d / "results" / "metrics.tsv"), delimiter="\t")}
        for d in (tmp_path, tiny_run)
    )
    assert killed.keys() == straight.keys()
    for key, row in killed.items():
        assert abs(float(row["psnr"]) - float(straight[key]["psnr"])) < 0.01
        assert abs(float(row["ssim"]) - float(straight[key]["ssim"])) < 1e-3


def test_training_killed_mid_way_resumes_from_its_checkpoint(tiny_run, tmp_path):
    """Kill every process of a running train_stage job (as Slurm does at a time limit), run it
    again; twice: SIGKILL (no warning: the last periodic checkpoint is what is left), then
    SIGTERM (training saves the step it was on). The model is the uninterrupted one."""
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    steps = 300
    config["train"].update(steps=steps, val_every=50, checkpoint_every=10)
    longer = tmp_path / "longer.yaml"
    longer.write_text(yaml.safe_dump(config))
    target = "results/models/stage1/checkpoint.pt"
    resume = workdir / "results" / "models" / "stage1" / "resume.pt"
    log_file = workdir / "results" / "logs" / "train_stage" / "stage1.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    previous = 0
    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc = subprocess.Popen(snakemake_cmd(workdir, target, config=longer), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not resume.exists() or torch.load(resume, weights_only=True)["step"] <= previous:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no new resume checkpoint within 300 s"
            time.sleep(0.1)
        os.killpg(proc.pid, sig)  # Snakemake, the job's script: every process, as Slurm does
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode != 0, output[-4000:]
        stopped = torch.load(resume, weights_only=True)["step"]
        assert previous < stopped < steps
        if previous:
            assert f"resumed from step {previous} of {steps}" in log_file.read_text()
        if sig == signal.SIGKILL:
            assert stopped % 10 == 0, "without warning, the last periodic checkpoint is what is left"
            run_snakemake(workdir, "--unlock", config=longer)  # the killed Snakemake left its lock
        else:
            assert f"stopped by SIGTERM after step {stopped}" in log_file.read_text()
        previous = stopped

    run_snakemake(workdir, target, config=longer)
    assert f"resumed from step {previous} of {steps}" in log_file.read_text()
    assert not resume.exists(), "deleted once the stage is trained"
    final = torch.load(workdir / target, weights_only=True)
    assert final["step"] == steps
    assert len((workdir / "results" / "models" / "stage1" / "train_log.tsv").read_text().splitlines()) == 1 + 6
    assert_same_model(final, train_reference(workdir, final, tmp_path / "reference"))


def test_slurm_profile_dry_run_sizes_the_jobs(tmp_path):
    """Without a cluster: profiles/slurm parses, combines with profiles/default, and sizes the jobs."""
    cmd = snakemake_cmd(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"))
    start = cmd.index("--set-threads")  # drop it and its values: the profile's threads are under test
    end = next(k for k in range(start + 1, len(cmd)) if cmd[k].startswith("--"))
    del cmd[start:end]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Using profiles" in output and "workflow specific profile" in output
    blocks = re.split(r"\n\s*(?:local)?rule ", output)[1:]  # group members are indented
    train = [b for b in blocks if b.startswith("train_stage:")]
    assert len(train) == 2
    for block in train:
        # mem_mb (from input sizes) and runtime ("12h") are resolved when the job is submitted
        assert "gpu=1," in block and "cpus_per_gpu=8" in block and "slurm_extra=--signal=TERM@300" in block
    make_lr = [b for b in blocks if b.startswith("make_lr:")]
    # a data rule's own 20 minutes (the profile's set-resources), not the 60 of default-resources
    assert make_lr and all("mem_mb=4000" in b and "gpu" not in b and "runtime=20" in b for b in make_lr)
