from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mrisr.data.splits import read_splits
from mrisr.io import voxel_sizes

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *args: str, config: Path = TINY_CONFIG) -> list[str]:
    """A snakemake call on this repository's workflow, writing into ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    return [
        str(exe if exe.exists() else shutil.which("snakemake")),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        # One torch thread per network job: on a shared 2-core machine two
        # threads that spin-wait for each other make training several times slower.
        # (Before --cores: a list option would swallow the targets in args.)
        "--set-threads", "train_predictor=1", "train_stage=1", "super_resolve=1",
        "apply_scan=1",
        "--cores", "2",
        *args,
    ]


def run_snakemake(
    workdir: Path, *args: str, config: Path = TINY_CONFIG, timeout: int = 900,
    env: dict[str, str] | None = None, check: bool = True,
) -> subprocess.CompletedProcess:
    """Run snakemake; ``env`` replaces the environment (default: this one), ``check`` raises on failure."""
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        snakemake_cmd(workdir, *args, config=config), capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def synthetic_volumes(seed: int, shape=(16, 16, 16)):
    """A seeded volume in [0, 1] that brightens along axis 0, and a box mask inside it."""
    rng = np.random.default_rng(seed)
    hr = np.clip(np.cumsum(rng.random(shape), axis=0) / shape[0], 0, 1).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return hr, mask


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints, as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> Path:
    """One complete end-to-end run of the tiny config, shared by the workflow tests, which read it or copy it
    and never write into it. Under pytest-xdist the workers share one run: the first to need it makes it
    while holding a file lock, the others wait for it."""
    if worker_id == "master":  # one process
        workdir = tmp_path_factory.mktemp("tiny_run")
        run_snakemake(workdir)
        return workdir
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this session
    workdir, done = root / "tiny_run", root / "tiny_run.done"
    with FileLock(str(root / "tiny_run.lock")):
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a worker's failed attempt
            workdir.mkdir()
            run_snakemake(workdir)
            done.touch()
    return workdir


def isolated_aws_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This environment without AWS credentials or config files, plus ``variables``.

    Credential files point into ``tmp_path`` (absent unless a test writes
    them) and the EC2 metadata lookup is off, so only what a test sets is found.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws_credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "aws_config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return env | variables


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """Make this process's AWS environment ``isolated_aws_env``; returns a setter for more variables."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in isolated_aws_env(tmp_path).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    def set_env(**variables: str) -> None:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.fixture(scope="session")
def hcp_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with a bucket laid out like HCP (``tests/s3_server.py``); stopped afterwards."""
    import logging

    from s3_server import start_hcp_server, stop_hcp_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    server = start_hcp_server(tmp_path_factory.mktemp("hcp_bucket"))
    yield server
    stop_hcp_server(server)


@pytest.fixture
def faulty_proxy(hcp_server):
    """A loopback proxy in front of ``hcp_server`` that can cut or corrupt responses; closed afterwards."""
    from s3_server import FaultyProxy

    proxy = FaultyProxy(hcp_server.endpoint_url)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def openneuro_server(tmp_path_factory):
    """moto's S3 server (own process, no authentication) with a bucket laid out like OpenNeuro's; stopped afterwards."""
    from s3_server import start_openneuro_server, stop_openneuro_server

    server = start_openneuro_server(tmp_path_factory.mktemp("openneuro_bucket"))
    yield server
    stop_openneuro_server(server)


@pytest.fixture
def openneuro_proxy(openneuro_server):
    """A faulty proxy in front of ``openneuro_server`` that spoils only responses over 4 kB: the scans, not the
    listings (``FaultyProxy(url, offset)`` for those)."""
    from s3_server import FaultyProxy

    proxy = FaultyProxy(openneuro_server.endpoint_url, offset=4096)
    yield proxy
    proxy.close()


def assert_same_training(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Model, EMA and optimiser states equal element by element (same operations in the same order)."""
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=rtol, atol=atol, msg=f"{key}.{name}")
    for pid, state in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[name], b["optimizer"]["state"][pid][name], rtol=rtol, atol=atol,
                                       msg=f"optimizer {pid} {name}")


def assert_same_model(a: dict, b: dict, rtol: float = 1e-4) -> None:
    """Two trainings that differ only in the order of floating-point sums agree as models.

    Element-wise comparison is too strict here: Adam turns the noise in a
    near-zero gradient (a bias in front of a GroupNorm) into full-size steps.
    What must agree is all weights taken together and what the network computes.
    """
    from mrisr.diffusion.nets import unet_from_config
    from mrisr.diffusion.parameterization import Parameterization

    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        va = torch.cat([v.flatten().double() for v in a[key].values()])
        vb = torch.cat([v.flatten().double() for v in b[key].values()])
        assert (va - vb).norm() <= rtol * vb.norm(), f"{key}: relative difference {(va - vb).norm() / vb.norm():.2e}"
    channels = Parameterization.from_diffusion(b["config"]["diffusion"]).cond_channels  # LR, and g for predict-and-refine
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 1, 16, 16, 16, generator=g), torch.rand(3, channels, 16, 16, 16, generator=g)
    t = torch.tensor([10, 500, 990])
    outputs = []
    for payload in (a, b):
        net = unet_from_config(payload["config"]["model"], cond_channels=channels)
        net.load_state_dict(payload["ema"])
        with torch.no_grad():
            outputs.append(net.eval()(x, cond, t))
    assert (outputs[0] - outputs[1]).abs().max() <= 10 * rtol * outputs[1].abs().max()


def train_reference(workdir: Path, payload: dict, out: Path) -> dict:
    """Train the stage of checkpoint ``payload`` again, straight and in this process, on the
    workflow's files in ``workdir``; returns the new checkpoint (the uninterrupted reference)."""
    from mrisr.data.splits import read_splits
    from mrisr.pipeline import train
    from mrisr.training import StageRun, TrainJob

    res = workdir / "results"
    subjects = read_splits(res / "splits.tsv")
    predictor = res / "models" / f"stage{payload['stage'] + 1}" / "predictor.pt"  # predict, then refine
    run = StageRun(payload["config"], payload["stage"], str(out / "checkpoint.pt"), str(out / "log.tsv"),
                   predictor=str(predictor) if predictor.exists() else None)
    cache = res / "cache" / f"stage{payload['stage'] + 1}"
    job = TrainJob(run, str(res / "splits.tsv"), caches={s: str(cache / s) for s in subjects if (cache / s).is_dir()})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(job, str(out / "loss.png"))
    finally:
        torch.set_num_threads(before)
    return torch.load(out / "checkpoint.pt", weights_only=True)


def check_tiny_outputs(workdir: Path) -> None:
    """Every output of a complete run of the tiny config is there, on the right grid, and sane."""
    res = workdir / "results"
    splits = read_splits(res / "splits.tsv")
    test_subjects = sorted(s for s, v in splits.items() if v == "test")
    assert len(splits) == 4 and len(test_subjects) == 1
    for subject in splits:
        hr = nib.load(res / "hr" / subject / "T1w.nii.gz")
        lr = nib.load(res / "lr" / subject / "x4.nii.gz")
        assert lr.shape == tuple(s // 4 for s in hr.shape)
        np.testing.assert_allclose(voxel_sizes(lr.affine), 4 * voxel_sizes(hr.affine))
    for stage in (1, 2):
        assert (res / "models" / f"stage{stage}" / "checkpoint.pt").stat().st_size > 0
        assert (res / "models" / f"stage{stage}" / "loss.png").stat().st_size > 0
    scale = json.loads((res / "calibration" / "sd_calibration.json").read_text())
    assert sorted(scale["subjects"]) == sorted(s for s, v in splits.items() if v == "val")
    # (the tiny model's spread may not rise with its error: then the scale is 0 and the map the RMS error)
    assert scale["scale"] >= 0 and scale["floor"] >= 0 and scale["scale"] + scale["floor"] > 0
    assert scale["sampling"]["n_samples"] == 2
    assert scale["method"] == "floor_scale"
    assert (res / "calibration" / "sr" / list(scale["subjects"])[0] / "sd_uncalibrated.nii.gz").exists()
    for subject in test_subjects:
        hr = nib.load(res / "hr" / subject / "T1w.nii.gz")
        sr = nib.load(res / "sr" / subject / "sr.nii.gz")
        stage1 = nib.load(res / "sr" / subject / "stage1.nii.gz")
        assert sr.shape == hr.shape
        np.testing.assert_allclose(sr.affine, hr.affine, atol=1e-5)
        assert stage1.shape == tuple(s // 2 for s in hr.shape), "stage 1 works on the intermediate grid"
        # the demo's path: sampling.estimate predictor, so sr is g alone; the samples (on mirrored volumes) differ
        predictor = nib.load(res / "sr" / subject / "sr_predictor.nii.gz").get_fdata()
        np.testing.assert_array_equal(sr.get_fdata(), predictor)
        assert np.abs(nib.load(res / "sr" / subject / "sr_sample.nii.gz").get_fdata() - predictor).max() > 1e-4
        np.testing.assert_allclose(voxel_sizes(stage1.affine), 2 * voxel_sizes(hr.affine))
        sd = nib.load(res / "sr" / subject / "sd.nii.gz")  # n_samples: 2 in the tiny config
        assert sd.shape == hr.shape and sd.get_fdata().max() > 0
        # the samples' sd through the calibration fitted on the validation subject (never on a test one)
        raw = nib.load(res / "sr" / subject / "sd_uncalibrated.nii.gz")
        expected = np.sqrt(scale["floor"] ** 2 + (scale["scale"] * raw.get_fdata()) ** 2)
        np.testing.assert_allclose(sd.get_fdata(), expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sd.affine, raw.affine)
        with open(res / "metrics" / f"{subject}_calibration.tsv", newline="") as fh:
            bins = list(csv.DictReader(fh, delimiter="\t"))
        assert len(bins) == 10 and all(math.isfinite(float(b["rmse"])) for b in bins)
    with open(res / "metrics.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    methods = ("spline", "sr", "sr_predictor", "sr_sample")  # predict, then refine: g alone and one sample too
    assert {(r["subject"], r["method"]) for r in rows} == {(s, m) for s in test_subjects for m in methods}
    for r in rows:
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1
    html = (res / "report" / "index.html").read_text()
    assert "PSNR" in html and "data range = 1" in html and html.count("data:image/png;base64,") >= 2
    assert "calibration/sd_calibration.json" in html and "RMS(sd) / RMS(error)" in html
    assert not list(res.rglob(".*.nii.gz.*")), "no temporary files left behind"
    assert not list(res.rglob("resume.pt")), "resume checkpoints are deleted once a stage is trained"


# --- Slurm -----------------------------------------------------------------------------

SLURM_PROFILE = REPO / "profiles" / "slurm"


def in_ci() -> bool:
    """CI sets CI=true; there the Slurm tests must run, never skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


TIMINGS_FILE = "MRISR_TEST_TIMINGS"  # environment variable: where every pytest-xdist worker appends its timings


def pytest_configure(config) -> None:
    """The session's timings file (inherited by pytest-xdist's workers), and torch's threads: with several
    workers on the machine's cores, one thread each, since threads that spin-wait for each other on shared
    cores make training several times slower."""
    if not hasattr(config, "workerinput"):  # the controlling process
        timings = Path(config.rootpath) / ".pytest_cache" / f"timings-{os.getpid()}.txt"
        timings.parent.mkdir(exist_ok=True)
        timings.write_text("")
        os.environ[TIMINGS_FILE] = str(timings)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def report_time(config, message: str) -> None:
    """Note a timing of the Slurm tests for the end of pytest's report."""
    with open(os.environ[TIMINGS_FILE], "a") as fh:
        fh.write(message.strip() + "\n")


def pytest_terminal_summary(terminalreporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):  # the controlling process reports every worker's
        return
    timings = Path(os.environ.get(TIMINGS_FILE, "/nonexistent"))
    lines = timings.read_text().splitlines() if timings.is_file() else []
    if lines:
        terminalreporter.write_sep("-", "Slurm timings")
        for line in lines:
            terminalreporter.write_line(line)
    timings.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory, pytestconfig):
    """A one-node Slurm cluster on this machine for the whole session (tests/slurm_cluster.py).

    A fixture rather than a step of .ci/run: the daemons live exactly as long
    as the tests that need them, are stopped even when a test fails, and
    ``make test`` on a developer's machine with Slurm installed runs the same
    tests as CI. Without Slurm (or root) the tests are skipped with the reason,
    except in CI, where that is a failure.
    """
    import slurm_cluster as sc

    reason = sc.unavailable_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must run the Slurm tests, but {reason}")
        pytest.skip(reason)
    import time

    cluster = sc.Cluster(tmp_path_factory.mktemp("slurm"))
    start = time.monotonic()
    try:
        cluster.start()
        report_time(pytestconfig, f"\nSlurm cluster up in {time.monotonic() - start:.1f} s")
        yield cluster
    finally:
        start = time.monotonic()
        cluster.stop()
        report_time(pytestconfig, f"\nSlurm cluster stopped in {time.monotonic() - start:.1f} s")


def slurm_snakemake_cmd(workdir: Path, *args: str, config: Path = TINY_CONFIG, timeout: int = 900,
                        set_resources: dict | None = None) -> list[str]:
    """snakemake --profile profiles/slurm, plus what the throw-away test cluster needs.

    The cluster has no accounting database: job states come from squeue and no
    account is given. Job states are polled sooner than on a real cluster (the
    plugin then waits 10 s longer after every poll that finds no job finished)
    and the jobs' Slurm logs are kept. ``set_resources`` replaces values of the profile's
    set-resources (Snakemake replaces the profile's whole list when
    --set-resources is on the command line, so the others are passed again).
    ``timeout -k 60`` ends a hung run: SIGTERM alone does not stop Snakemake.
    """
    import yaml

    extra: list[str] = []
    if set_resources:
        profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
        resources = {rule: dict(values) for rule, values in profile["set-resources"].items()}
        for rule, values in set_resources.items():
            resources.setdefault(rule, {}).update(values)
        extra = ["--set-resources", *(f"{rule}:{key}={value}" for rule, values in resources.items()
                                      for key, value in values.items())]
    exe = Path(sys.executable).with_name("snakemake")
    return [
        "timeout", "-k", "60", str(timeout),
        str(exe if exe.exists() else shutil.which("snakemake")),
        "--profile", str(SLURM_PROFILE),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-no-account",
        "--slurm-keep-successful-logs",
        "--jobs", "8",
        *args,  # before --set-resources, which would take targets for more resources
        *extra,
    ]


def slurm_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": os.pathsep.join(("/usr/sbin", "/sbin", os.environ["PATH"]))}


@pytest.fixture(scope="session")
def slurm_tiny_run(slurm_cluster, tmp_path_factory, pytestconfig):
    """The tiny config run end to end through ``snakemake --profile profiles/slurm``.

    Returns (workdir, Snakemake's output, the run's Slurm job records).
    """
    import re
    import time

    workdir = tmp_path_factory.mktemp("slurm_tiny_run")
    start = time.monotonic()
    proc = subprocess.run(slurm_snakemake_cmd(workdir), capture_output=True, text=True, env=slurm_env())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{output[-6000:]}\n{slurm_cluster.logs()}"
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    jobs = [job for job in slurm_cluster.jobs() if job.get("JobName") == run_id]
    report_time(pytestconfig, f"\ntiny workflow through Slurm: {time.monotonic() - start:.0f} s, {len(jobs)} Slurm jobs")
    return workdir, output, jobs
