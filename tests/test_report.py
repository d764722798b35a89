"""The report's parts on small synthetic inputs: numbers, redaction, orientation, figures, the page."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
import subprocess

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TINY_CONFIG
from mrisr.data.degrade import downsample, downsample_affine, upsample
from mrisr.config import SamplingOptions
from mrisr.diffusion.schedule import make_schedule, sampling_schedule
from mrisr.io import save_volume
from mrisr.metrics import write_metrics
from mrisr.report import build, figures, page, provenance, slices, tables
from report_html import check_report_matches_metrics, decode_data_uri, parse_report

# -- numbers -----------------------------------------------------------------------------


def rows_of(table: dict[tuple[str, str], float], ssim: float = 0.9) -> list[dict]:
    """Metric rows; the interior PSNR is the whole-mask PSNR less 1 dB, HFEN 0.3."""
    return [{"subject": s, "method": m, "psnr": v, "ssim": ssim, "psnr_interior": v - 1.0, "ssim_interior": ssim,
             "hfen": 0.3, "data_range": 1.0} for (s, m), v in table.items()]


def test_summary_statistics_by_hand():
    rows = rows_of({
        ("a", "sr"): 30.0, ("a", "spline"): 29.0, ("a", "sr_ema"): 28.0,
        ("b", "sr"): 26.0, ("b", "spline"): 27.0, ("b", "sr_ema"): 27.5,
        ("c", "sr"): 31.0, ("c", "spline"): 30.0,
    })
    out = {s.method: s for s in tables.summarise(rows)}
    assert list(out) == ["spline", "sr", "sr_ema"], "baseline first, then the order of first appearance"
    sr = out["sr"]
    assert (sr.psnr.n, sr.psnr.mean, sr.psnr.median) == (3, 29.0, 30.0)
    assert sr.psnr.sd == pytest.approx(math.sqrt(((1 ** 2) + (3 ** 2) + (2 ** 2)) / 2))
    assert [sr.gain.mean, sr.gain.median, sr.wins] == [pytest.approx(1 / 3), 1.0, 2]
    assert out["sr_ema"].gain.n == 2 and out["sr_ema"].wins == 1
    assert out["spline"].gain is None
    assert tables.gains_over_baseline(rows)[("b", "sr_ema")] == 0.5
    assert [sr.gain_interior.mean, sr.wins_interior, sr.psnr_interior.mean] == [pytest.approx(1 / 3), 2, 28.0]


def test_interior_gains_are_scored_apart_from_whole_mask_gains():
    rows = rows_of({("a", "spline"): 20.0, ("a", "sr"): 22.0, ("b", "spline"): 20.0, ("b", "sr"): 21.0})
    for r in rows:  # sr wins the whole mask on both subjects, but loses the interior on b
        if r["method"] == "sr":
            r["psnr_interior"] = {"a": 19.5, "b": 18.0}[r["subject"]]
    sr = tables.summarise(rows)[1]
    assert (sr.gain.mean, sr.wins) == (1.5, 2)
    assert (sr.gain_interior.mean, sr.wins_interior) == (-0.25, 1)
    html = page.lead(tables.summarise(rows))
    assert "interior PSNR gain −0.25 dB</b>, better than spline on 1 of 2" in html and "whole brain mask: +1.50 dB" in html


def test_one_subject_has_no_sd_and_repeated_rows_are_refused():
    one = tables.summarise(rows_of({("a", "spline"): 20.0, ("a", "sr"): 21.0}))
    assert one[1].psnr.sd is None and one[1].gain.mean == 1.0
    with pytest.raises(ValueError, match="repeated"):
        tables.summarise(rows_of({("a", "sr"): 1.0}) * 2)


def test_benchmark_file_snakemake_format(tmp_path):
    path = tmp_path / "benchmarks" / "super_resolve" / "demo03.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "66.75\t0:01:06\t1066.62\t1670.95\t1041.64\t1052.97\t2.63\t0.01\t128.46\t86.35\n"
        "70.25\t0:01:10\t-\t-\t-\t-\t-\t-\t-\t90.35\n"
    )
    cost = tables.read_benchmark(path)
    assert (cost.rule, cost.job, cost.repeats) == ("super_resolve", "demo03", 2)
    assert cost.seconds == pytest.approx(68.5) and cost.cpu_seconds == pytest.approx(88.35)
    assert cost.max_rss_mb == pytest.approx(1066.62)
    nested = tmp_path / "benchmarks" / "train_stage" / "compare" / "unet3d" / "stage1.tsv"  # a compared model's
    nested.parent.mkdir(parents=True)
    nested.write_text(path.read_text())
    assert (tables.read_benchmark(nested).rule, tables.read_benchmark(nested).job) == ("train_stage",
                                                                                       "compare/unet3d/stage1")
    assert [tables.hms(59.6), tables.hms(3725)] == ["1:00", "1:02:05"]
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a Snakemake benchmark"):
        tables.read_benchmark(bad)


def test_model_rows_match_costs_by_exact_job_name():
    """Compared names that prefix one another ("a", "a_b") keep their own costs."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["compare"] = {"a": {"train": {"steps": 3}}, "a_b": {"train": {"steps": 4}}}
    cost = lambda rule, job, s: tables.Cost(rule, job, s, s, float("nan"), 1)  # noqa: E731
    costs = [
        cost("train_stage", "stage1", 10), cost("train_stage", "stage2", 20), cost("super_resolve", "demo03", 5),
        cost("train_stage", "compare/a/stage1", 1), cost("train_stage", "compare/a/stage2", 2),
        cost("train_stage", "compare/a_b/stage1", 100), cost("train_stage", "compare/a_b/stage2", 200),
        cost("super_resolve", "compare/a/demo03", 3), cost("super_resolve", "compare/a_b/demo03", 7),
        cost("super_resolve", "compare/a/demo09", 1000),  # not a test subject: ignored
        cost("super_resolve", "calibration/demo03", 500),  # the sd map's calibration branch: not a model's cost
    ]
    logs = {"sr": [{"parameters": [10.0, 10.0]}, {"parameters": [20.0, 20.0]}],  # the count on every log row
            "sr_a": [{"parameters": [1.0]}, {"parameters": [2.0]}], "sr_a_b": [{"step": [3.0]}, {"step": [3.0]}]}
    rows = {r["method"]: r for r in build.model_rows(config, logs, costs, ["demo03"])}
    assert [(m, r["train_seconds"], r["train_steps"], r["sr_seconds"]) for m, r in rows.items()] == [
        ("sr", 30, 12, 5), ("sr_a", 3, 6, 3), ("sr_a_b", 300, 8, 7)]
    assert [rows["sr"]["parameters"], rows["sr_a"]["parameters"]] == [30, 3]
    assert math.isnan(rows["sr_a_b"]["parameters"])  # logs written before the column existed
    assert math.isnan(build.model_rows(config, logs, [], ["demo03"])[0]["train_seconds"])


# -- provenance ---------------------------------------------------------------------------


def test_redaction_hides_credentials_keeps_the_rest():
    config = {
        "source": "hcp",
        "hcp": {
            "bucket": "hcp-openaccess", "aws_profile": "hcp", "aws_access_key_id": "AKIAABCDEFGHIJKLMNOP",
            "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG", "credentials": {"user": "me", "pin": 1234},
            "session_token": "", "endpoint": "https://s3.amazonaws.com",
        },
        "notes": ["see s3://bucket?key=AKIAABCDEFGHIJKLMNOP"],
        "train": {"steps": 300, "lr": 0.0005},
    }
    out = provenance.redact(config)
    text = yaml.safe_dump(out)
    for secret in ("AKIAABCDEFGHIJKLMNOP", "wJalrXUtnFEMI", "1234", "me\n"):
        assert secret not in text
    hcp = out["hcp"]
    assert hcp["aws_profile"] == hcp["aws_access_key_id"] == hcp["credentials"] == provenance.REDACTED
    assert hcp["session_token"] == "", "an empty value shows no secret was set"
    assert (hcp["bucket"], hcp["endpoint"]) == ("hcp-openaccess", "https://s3.amazonaws.com")
    assert out["train"] == {"steps": 300, "lr": 0.0005} and out["source"] == "hcp"
    assert config["hcp"]["aws_profile"] == "hcp", "the config itself is not modified"


def test_git_state(tmp_path):
    assert "not a git checkout" in provenance.git_state(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert provenance.git_state(repo) == f"{head} (main)"
    (repo / "f").write_text("2")
    assert provenance.git_state(repo) == f"{head} (main), with uncommitted changes"


def test_package_versions_name_what_is_missing():
    versions = provenance.package_versions(["numpy", "surely-not-a-package-xyz"])
    assert versions["numpy"] == np.__version__ and versions["surely-not-a-package-xyz"] == "not installed"


def write_lock(path, pins: dict[str, str]) -> None:
    """A lock file as pip-compile writes it: pins, hashes, comments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#\n#    make lock\n#\n" + "".join(
        f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n    # via mrisr (pyproject.toml)\n"
        for name, version in pins.items()) + "\n# WARNING: ...\n# mrisr\n")


def test_lock_check_says_which_lock_matches_and_what_differs(tmp_path):
    write_lock(tmp_path / "requirements" / "cpu.txt", {"numpy": "2.4.6", "PyYAML": "6.0.4", "torch": "2.13.0+cpu"})
    write_lock(tmp_path / "requirements" / "cuda.txt",
               {"numpy": "2.4.6", "PyYAML": "6.0.4", "torch": "2.13.0", "nvidia-cublas": "13.1.1.3"})
    base = {"numpy": "2.4.6", "pyyaml": "6.0.4", "pip": "23.2.1", "mrisr": "0.1.0", "Monai": "1.5.1"}

    cpu = provenance.lock_check(tmp_path, base | {"torch": "2.13.0+cpu"})
    assert (cpu.lock, cpu.locked, cpu.differ, cpu.matches) == ("requirements/cpu.txt", 3, [], True)
    assert cpu.extra == [("monai", "1.5.1")], "pip and mrisr are never locked"
    text = re.sub("<[^>]+>", "", page.environment_html(cpu))
    assert text == "matches requirements/cpu.txt: all 3 packages at the locked version; " \
                   "also installed, not in the lock: monai 1.5.1"

    cuda = provenance.lock_check(tmp_path, base | {"torch": "2.13.0", "nvidia_cublas": "13.1.1.3"})
    assert cuda.lock == "requirements/cuda.txt" and cuda.matches, "the closer of the two locks"

    off = provenance.lock_check(tmp_path, {"numpy": "2.4.5", "torch": "2.13.0+cpu", "pip": "23.2.1"})
    assert off.lock == "requirements/cpu.txt" and not off.matches
    assert off.differ == [("numpy", "2.4.6", "2.4.5"), ("pyyaml", "6.0.4", None)]
    html = page.environment_html(off)
    assert re.sub("<[^>]+>", "", html) == "differs from requirements/cpu.txt in 2 of 3 packages: " \
                                          "numpy 2.4.5 (locked 2.4.6), pyyaml not installed (locked 6.0.4)"
    assert '<span class="neg">' in html

    assert provenance.lock_check(tmp_path, {"numpy": "2.4.6.0", "pyyaml": "6.0.4", "torch": "2.13.0+cpu"}).matches, \
        "versions compare as versions"
    many = provenance.lock_check(tmp_path, base | {"torch": "2.13.0+cpu"} | {f"x{k}": "1" for k in range(20)})
    assert "and 9 more" in page.environment_html(many), "a long tail of unlocked packages is cut"


def test_lock_check_without_a_lock_file(tmp_path):
    none = provenance.lock_check(tmp_path)
    assert none.lock is None and not none.matches and none.note.startswith("no lock file found")
    assert page.environment_html(none).startswith("no lock file found (requirements/cpu.txt, requirements/cuda.txt")
    assert provenance.lock_check(None).note == "unknown (no source directory given)"


def test_lock_check_reads_this_repository_and_environment():
    """The real lock files parse, and the running environment is compared with one of them."""
    from conftest import REPO

    locked = provenance.locked_versions(REPO / "requirements" / "cpu.txt")
    assert len(locked) > 100 and locked["torch"].endswith("+cpu") and "scikit-image" in locked
    check = provenance.lock_check(REPO)
    assert check.lock in provenance.LOCK_FILES
    assert check.locked == len(provenance.locked_versions(REPO / check.lock))


# -- the noise schedule plot's data --------------------------------------------------------


@pytest.mark.parametrize("configured, other", [("cosine", "seed"), ("seed", "cosine")])
def test_schedule_curves_are_the_schedules(configured, other):
    diffusion = {"schedule": configured, "num_timesteps": 1000, "noise_var": 0.3}
    sampling = SamplingOptions.from_mapping({"method": "ddim", "steps": 3, "n_samples": 2})
    c = figures.schedule_curves(diffusion, sampling)
    assert list(c["curves"]) == [configured, other]
    for name, curve in c["curves"].items():
        abar = make_schedule(name, 1000, 0.3).alphas_cumprod
        np.testing.assert_array_equal(curve["alphas_cumprod"], abar)
        np.testing.assert_allclose(curve["noise_variance"], (1 - abar) * 0.3)
    np.testing.assert_array_equal(c["sampled_t"], [1, 501, 1000])
    expected = sampling_schedule(diffusion, sampling).timestep_map + 1
    np.testing.assert_array_equal(c["sampled_t"], expected)
    assert figures.first_t_below(c["curves"]["seed"]["alphas_cumprod"], 1e-3) == 203


# -- volumes ---------------------------------------------------------------------------------


def test_to_ras_undoes_flips_and_permutations():
    ras = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 7.0]
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("I", "R", "P")))
    stored = nib.Nifti1Image(ras, affine).as_reoriented(transform)
    data, stored_affine = np.asarray(stored.dataobj), stored.affine
    assert nib.aff2axcodes(stored_affine) == ("I", "R", "P") and data.shape == (6, 4, 5)
    # The test input is right: a value sits at the same world position in both arrays.
    for value in (0, 37, 119):
        a = np.argwhere(ras == value)[0]
        b = np.argwhere(data == value)[0]
        np.testing.assert_allclose(affine @ [*a, 1], stored_affine @ [*b, 1])
    out, spacing = slices.to_ras(data, stored_affine)
    np.testing.assert_array_equal(out, ras)
    np.testing.assert_array_equal(spacing, [2.0, 3.0, 4.0])


def test_nearest_to_grid_shows_lr_voxels():
    lr = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    up = slices.nearest_to_grid(lr, (4, 4, 4))
    np.testing.assert_array_equal(up[::2, ::2, ::2], lr)
    np.testing.assert_array_equal(up[1::2, 1::2, 1::2], lr)
    odd = slices.nearest_to_grid(lr, (3, 5, 4))
    assert odd.shape == (3, 5, 4) and set(np.unique(odd)) <= set(lr.ravel())


def test_zoom_window_finds_the_edges_and_stays_clear_of_the_inset():
    image = np.zeros((40, 40))
    image[25:, 25:] = 1.0  # an edge only near the top-right (origin='lower': high rows are at the top)
    mask = np.ones_like(image, bool)
    brain = np.ones((40, 40), bool)
    brain[24:, :16] = False  # only the top-left corner is outside the brain
    assert slices.inset_corner(brain, 0.4) == (0.0, 0.6), "the inset goes where there is no brain"
    r, c = slices.zoom_window(image, mask, 8, avoid=(0.0, 0.0), size=0.4)
    assert 25 - 8 < r <= 25 and 25 - 8 < c <= 25, "the window holds the corner of the bright square"
    r, c = slices.zoom_window(image, mask, 8, avoid=(0.6, 0.6), size=0.4)
    assert not (r + 8 > 24 and c + 8 > 24), "never under the inset"


def write_subject(root, subject: str, seed: int, affine=None, shape=(16, 16, 12)):
    """HR, mask, LR (x2), spline and a noisy SR of a smooth synthetic head, as the workflow lays them out."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    mask = radius < 0.85
    hr = np.where(mask, 0.5 + 0.4 * np.cos(4 * grid[0] + seed) * np.sin(3 * grid[1]), 0).astype(np.float32)
    lr = downsample(hr, 2)
    paths = {
        "hr": root / "hr" / subject / "T1w.nii.gz", "mask": root / "hr" / subject / "brainmask.nii.gz",
        "lr": root / "lr" / subject / "x2.nii.gz", "spline": root / "baseline" / subject / "spline.nii.gz",
        "sr": root / "sr" / subject / "sr.nii.gz",
    }
    save_volume(paths["hr"], hr, affine)
    save_volume(paths["mask"], mask, affine, dtype=np.uint8)
    save_volume(paths["lr"], lr, downsample_affine(affine, 2))
    save_volume(paths["spline"], np.clip(upsample(lr, 2), 0, 1), affine)
    save_volume(paths["sr"], np.clip(hr + 0.05 * rng.standard_normal(hr.shape), 0, 1), affine)
    return paths


def test_slice_figures_decode_and_sweep_starts_mid_brain(tmp_path):
    p = write_subject(tmp_path, "s1", 0)
    build.slice_figures(str(p["lr"]), str(p["spline"]), str(p["sr"]), str(p["hr"]), str(p["mask"]), "s1",
                        str(tmp_path / "s1.png"), str(tmp_path / "s1.gif"))
    panel = Image.open(tmp_path / "s1.png")
    assert panel.format == "PNG" and panel.size[0] > 800
    gif = Image.open(tmp_path / "s1.gif")
    mask = nib.load(p["mask"]).get_fdata() > 0
    brain_slices = np.flatnonzero(mask.any(axis=(0, 1)))
    assert gif.format == "GIF" and gif.n_frames == len(brain_slices) and gif.info["loop"] == 0
    assert build.gif_width(open(tmp_path / "s1.gif", "rb").read()) == gif.size[0]
    frames = []
    for k in range(gif.n_frames):
        gif.seek(k)
        frames.append(np.asarray(gif.convert("L"), dtype=float))
    brightness = [f.mean() for f in frames]
    assert brightness[0] == pytest.approx(max(brightness), rel=0.1), "the first frame (the still) is mid-brain"
    assert len({round(b, 3) for b in brightness}) > 1, "the frames differ: it is a sweep"


# -- the page ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_report(tmp_path_factory):
    """A report of 4 synthetic test subjects and three methods (one the workflow does not make)."""
    root = tmp_path_factory.mktemp("report") / "results"
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["hcp"] = {"aws_profile": "my-secret-profile", "bucket": "hcp-openaccess"}
    subjects = ["s1", "s2", "s3", "s4"]
    rows, slice_files = [], {}
    p = write_subject(root, "s1", 0)
    figs = (root / "report" / "slices" / "s1.png", root / "report" / "slices" / "s1.gif")
    build.slice_figures(*(str(p[n]) for n in ("lr", "spline", "sr", "hr", "mask")), "s1", *map(str, figs))
    for k, s in enumerate(subjects):
        out = (figs[0].with_name(f"{s}.png"), figs[1].with_name(f"{s}.gif"))
        if s != "s1":  # the page only embeds these files: one subject's figures stand in for all
            shutil.copy(figs[0], out[0])
            shutil.copy(figs[1], out[1])
        slice_files[s] = tuple(map(str, out))
        values = [("spline", 25.0 + k, 0.80 + k / 100), ("sr", 25.0 + k + (k - 1.6) / 3, 0.81 + k / 90),
                  ("sr_ema", 24.123456 + k, 0.7 + k / 50)]
        for method, psnr, ssim in values:
            rows.append({"subject": s, "method": method, "psnr": psnr, "ssim": ssim, "psnr_interior": psnr - 0.7 * k,
                         "ssim_interior": ssim - 0.01, "hfen": 0.4 - psnr / 100, "data_range": 1.0})
    write_metrics(root / "metrics.tsv", rows)
    logs = []
    for stage in (1, 2):
        log = root / "models" / f"stage{stage}" / "train_log.tsv"
        log.parent.mkdir(parents=True)
        log.write_text("step\ttrain_loss\tval_loss\tlr\tseconds\n3\t0.02\t0.03\t0.001\t1.5\n6\t0.01\t0.025\t0.001\t3.0\n")
        logs.append(str(log))
    benches = []
    for rule, job in [("train_stage", "stage1"), ("train_stage", "stage2"), ("super_resolve", "s1")]:
        b = root / "benchmarks" / rule / f"{job}.tsv"
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\t400.5\t11.0\n")
        benches.append(str(b))
    calibration = []
    for k, s in enumerate(subjects):  # 3 bins; errors grow with sd, subject k's errors scale with k + 1
        c = root / "metrics" / f"{s}_calibration.tsv"
        c.parent.mkdir(parents=True, exist_ok=True)
        c.write_text("subject\tbin\tsd\trmse\tmae\tvoxels\n" + "".join(
            f"{s}\t{b}\t{0.01 * (b + 1)}\t{0.01 * (b + 1) * (k + 1)}\t{0.008 * (b + 1)}\t100\n" for b in range(3)))
        calibration.append(str(c))
    outputs = {k: str(root / "report" / name) for k, name in [
        ("html", "index.html"), ("metrics_png", "metrics.png"), ("loss_png", "loss.png"),
        ("schedule_png", "schedule.png"), ("summary_tsv", "summary.tsv"), ("cost_tsv", "cost.tsv")]}
    from mrisr.data.splits import write_splits

    write_splits(root / "splits.tsv", {s: "test" for s in subjects} | {"t1": "train", "v1": "val"})
    sd_calibration = root / "calibration" / "sd_calibration.json"
    sd_calibration.parent.mkdir()
    sd_calibration.write_text(json.dumps({"method": "floor_scale", "floor": 0.012, "scale": 1.5, "rms_error": 0.03,
                                          "rms_sd": 0.02, "subjects": {"v1": {}}}))
    inputs = build.ReportInputs(metrics=str(root / "metrics.tsv"), splits=str(root / "splits.tsv"), config=config,
                                train_logs=logs, benchmarks=benches, slices=slice_files, calibration=calibration,
                                sd_calibration=str(sd_calibration))
    build.build_report(inputs, build.ReportOutputs(**outputs))
    return root, outputs


def test_report_numbers_equal_the_metrics_table(built_report):
    root, outputs = built_report
    html = open(outputs["html"], encoding="utf-8").read()
    with open(root / "metrics.tsv", newline="") as fh:
        rows = [{**r, **{k: float(r[k]) for k in ("psnr", "ssim", "psnr_interior", "ssim_interior", "hfen")}}
                for r in csv.DictReader(fh, delimiter="\t")]
    check_report_matches_metrics(html, rows)
    with open(outputs["summary_tsv"], newline="") as fh:
        summary = {r["method"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert list(summary) == ["spline", "sr", "sr_ema"]
    ema = [r["psnr"] for r in rows if r["method"] == "sr_ema"]
    assert float(summary["sr_ema"]["psnr_mean"]) == pytest.approx(statistics.fmean(ema), abs=1e-12)
    assert summary["sr"]["better_than_spline"] == "2" and summary["spline"]["gain_mean"] == ""


def test_report_page_contents(built_report):
    root, outputs = built_report
    html = open(outputs["html"], encoding="utf-8").read()
    tables_, images = parse_report(html)
    assert "my-secret-profile" not in html and "hcp-openaccess" in html
    assert "data range = 1" in html and "sr_ema" in html
    kv = {row[0]["text"]: row[1]["text"] for row in tables_["provenance-table"]["rows"]}
    assert kv["environment"] == "unknown (no source directory given)", "built without repo_dir"
    assert {"metrics-summary", "metrics-per-subject", "training-summary", "cost-train_stage",
            "cost-super_resolve", "provenance-table"} <= set(tables_)
    # More than three test subjects: the lowest, median and highest gain of sr are shown.
    shown = [img["alt"] for img in images if img["alt"].startswith("slice panels")]
    assert shown == ["slice panels s1", "slice panels s3", "slice panels s4"]
    assert "lowest interior PSNR gain of sr over spline: −0.53 dB" in html
    for img in images:
        mime, data = decode_data_uri(img["src"])
        picture = Image.open(io.BytesIO(data))
        picture.load()
        assert picture.size[0] > 0 and mime == f"image/{picture.format.lower()}", img["alt"]
    assert len(images) == 1 + 3 * 2 + 1 + 2, "metrics, 3 x (panels, sweep), uncertainty, loss, schedule"
    # Pooled bins: mean sd 0.01 (b + 1); RMS error sqrt(mean((k + 1)^2)) 0.01 (b + 1) = 0.02739 (b + 1).
    # (these tables predate the rms_sd column: the RMS sd is taken as the mean sd)
    bins = [[c["text"] for c in row] for row in tables_["uncertainty-bins"]["rows"]]
    assert bins == [["1", "0.0100", "0.0100", "0.0274", "2.74"], ["2", "0.0200", "0.0200", "0.0548", "2.74"],
                    ["3", "0.0300", "0.0300", "0.0822", "2.74"]]
    assert "most uncertain bin is 3.0× that in the least uncertain" in html
    # calibrated on the validation subject v1; the test bins' RMS sd / RMS error is 1 / 2.74
    assert "calibrated as √(0.0120² + (1.50·sd)²)" in html and "fitted on 1 validation subject super-resolved" in html
    assert "RMS error of SR was 0.0300 and the samples' RMS sd 0.0200" in html
    assert "On the test subjects RMS(sd) / RMS(error) = <b>0.37</b> (0.37 in the least uncertain bin, 0.37 in" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html.replace(
        "https://s3.amazonaws.com", ""), "self-contained: nothing is fetched"
    cost = tables_["cost-train_stage"]["rows"]
    assert [c["text"] for c in cost[0]] == ["stage1", "0:12", "12.5", "11.0", "400", "2.083"]
    with open(outputs["cost_tsv"]) as fh:
        assert fh.read().splitlines()[1] == "train_stage\tstage1\t12.50\t11.00\t400.5\t1"


def test_page_number_formatting():
    assert page.fmt(-0.804, 2, signed=True) == "−0.80" and page.fmt(None, 2) == "n/a"
    assert page.num(1.0, 2, signed=True) == '<td data-value="1.0" class="pos">+1.00</td>'
    assert page.fmt(float("inf"), 2) == "∞"



def test_uncertainty_section_without_samples_says_how_to_get_one():
    html = page.uncertainty_section(None, None, {"n_samples": 1}, 0)
    assert "n_samples = 1" in html and "sd.nii.gz" in html and "<img" not in html


def test_uncertainty_section_of_an_uncalibrated_map_says_so():
    pooled = {"sd": [0.01, 0.02], "rmse": [0.02, 0.04], "mae": [0.015, 0.03], "voxels": [10, 10]}
    html = page.uncertainty_section(pooled, b"png", {"n_samples": 3, "estimate": "posterior_mean"}, 2)
    assert "calibration.subjects: 0" in html and "σ-scaling" not in html
    assert "RMS(sd) / RMS(error) = <b>0.50</b>" in html
    scaled = page.uncertainty_section(pooled | {"rms_sd": [0.02, 0.03]}, b"png", {"n_samples": 3}, 2, {
        "method": "scale", "floor": 0.0, "scale": 4.0, "rms_error": 0.04, "rms_sd": 0.01, "subjects": {"v": {}}})
    assert "calibrated as 4.00·sd (σ-scaling" in scaled and "RMS(sd) / RMS(error) = <b>0.81</b>" in scaled
    assert "(1.00 in the least uncertain bin, 0.75 in the most uncertain one" in scaled
    constant = page.uncertainty_section(pooled, b"png", {"n_samples": 3}, 2, {
        "method": "floor_scale", "floor": 0.03, "scale": 0.0, "rms_error": 0.03, "rms_sd": 0.01, "subjects": {}})
    assert "calibrated as the constant 0.0300, the validation subjects' RMS error" in constant


def test_training_cost_takes_its_peak_memory_from_the_train_log():
    from mrisr.report.tables import Cost, with_training_peaks

    costs = [Cost("train_stage", "stage1", 10.0, 9.0, 100.0, 1), Cost("train_stage", "stage2", 10.0, 9.0, 120.0, 1),
             Cost("super_resolve", "demo03", 5.0, 4.0, 300.0, 1)]
    logs = [{"step": [1.0, 2.0], "peak_rss_mb": [900.0, 1500.0]}, {"step": [1.0]}]  # stage 2: an older log
    out = with_training_peaks(costs, logs)
    assert [c.max_rss_mb for c in out] == [1500.0, 120.0, 300.0]
