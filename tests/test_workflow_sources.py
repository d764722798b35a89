"""The workflow on the hcp and local sources: fetch, verify, skull-strip, and the rest of the DAG."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from s3_server import READABLE

from conftest import TINY_CONFIG, isolated_aws_env, job_counts, run_snakemake
from mrisr.data.brain_extraction import dice
from mrisr.data.phantom import make_head_phantom
from mrisr.io import crop_or_pad, save_volume

pytestmark = pytest.mark.slow


def write_config(path: Path, **changes) -> Path:
    """The tiny test config with some top-level keys replaced."""
    config = yaml.safe_load(TINY_CONFIG.read_text()) | changes
    path.write_text(yaml.safe_dump(config))
    return path


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_hcp_source_fetches_verifies_and_runs_the_whole_workflow(hcp_server, faulty_proxy, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # The keys live in a named profile of a credentials file, as a user would keep them.
    env = isolated_aws_env(tmp_path)
    Path(env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[hcp-test]\naws_access_key_id = {hcp_server.access_key_id}\n"
        f"aws_secret_access_key = {hcp_server.secret_access_key}\n"
    )
    hcp = {
        "subjects": [int(READABLE[0]), READABLE[1], READABLE[2]],  # YAML may give IDs as integers
        "endpoint_url": faulty_proxy.url,
        "profile": "hcp-test",
        "attempts": 1,
        "backoff_s": 0.0,
        "timeout_s": 20,
    }
    # One x2 stage: the rest of the DAG runs in full, in half the time of the tiny config's two.
    config = write_config(tmp_path / "hcp.yaml", source="hcp", hcp=hcp, cascade={"factors": [2]})
    raw = workdir / "results" / "raw"

    # A transfer cut short fails the job and leaves nothing that looks complete.
    faulty_proxy.spoil("cut")
    target = f"results/raw/{READABLE[0]}/T1w.nii.gz"
    failed = run_snakemake(workdir, target, config=config, env=env, check=False)
    assert failed.returncode != 0 and faulty_proxy.spoiled == 1
    assert not (raw / READABLE[0]).exists() or list((raw / READABLE[0]).iterdir()) == []
    log = (workdir / "results" / "logs" / "fetch" / f"{READABLE[0]}.log").read_text()
    assert "the transfer failed 1 times" in log

    # The re-run completes, and the rest of the DAG runs on the fetched subjects.
    faulty_proxy.spoil("pass")
    done = run_snakemake(workdir, config=config, env=env)
    counts = job_counts(done.stdout + done.stderr)
    assert counts["fetch"] == 3 and counts["skullstrip"] == 3 and counts["report"] == 1
    for subject in READABLE:
        for name, file in (("t1", "T1w.nii.gz"), ("mask", "brainmask.nii.gz")):
            assert (raw / subject / file).read_bytes() == hcp_server.objects[hcp_server.key(subject, name)]
        source_mask = np.asarray(nib.load(raw / subject / "brainmask.nii.gz").dataobj)
        hr_mask = np.asarray(nib.load(workdir / "results" / "hr" / subject / "brainmask.nii.gz").dataobj)
        assert hr_mask.sum() == source_mask.sum(), "skullstrip used the source's mask"
    assert (workdir / "results" / "report" / "index.html").stat().st_size > 0
    assert "brain mask from the source" in (workdir / "results" / "logs" / "skullstrip" / f"{READABLE[1]}.log").read_text()

    # The keys appear in no log, result, metadata or output of the run.
    for secret in (hcp_server.secret_access_key, hcp_server.access_key_id):
        assert files_containing(workdir, secret) == []
        assert secret not in failed.stdout + failed.stderr + done.stdout + done.stderr


@pytest.fixture(scope="module")
def bids_phantoms(tmp_path_factory):
    """A BIDS folder of three whole-head phantom subjects without masks, read-only, and their true masks."""
    root = tmp_path_factory.mktemp("bids")
    base = make_head_phantom(4, seed=5)
    rng = np.random.default_rng(0)
    variants = {
        "sub-01": (base.t1, base.mask),
        "sub-02": (base.t1[::-1] * 2.0, base.mask[::-1]),  # mirrored, another scanner gain
        "sub-03": (base.t1 + rng.normal(0, 15, base.t1.shape).astype(np.float32), base.mask),
    }
    files = {}
    for subject, (t1, _) in variants.items():
        session = "ses-1/" if subject == "sub-02" else ""
        name = f"{subject}_ses-1_T1w.nii.gz" if session else f"{subject}_T1w.nii.gz"
        files[subject] = root / subject / session / "anat" / name
        files[subject].parent.mkdir(parents=True)
        save_volume(files[subject], np.abs(t1), base.affine)
    later = root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii.gz"  # not used: ses-1 comes first
    later.parent.mkdir(parents=True)
    save_volume(later, np.abs(base.t1), base.affine)
    for path in list(files.values()) + [later]:
        path.chmod(0o444)
    masks = {subject: mask for subject, (_, mask) in variants.items()}
    return root, files, masks, base.affine


def test_local_bids_source_is_read_only_and_skull_stripped_with_an_estimated_mask(bids_phantoms, tmp_path):
    root, files, masks, affine = bids_phantoms
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in root.rglob("*.nii.gz")}
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(tmp_path / "local.yaml", source="local", local={"bids_root": str(root)})

    plan = run_snakemake(workdir, "-n", config=config)
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts["fetch"] == 3 and counts["skullstrip"] == 3 and counts["train_stage"] == 2 and counts["report"] == 1

    targets = [f"results/hr/{s}/brainmask.nii.gz" for s in files]
    run_snakemake(workdir, *targets, config=config)
    res = workdir / "results"
    for subject, source in files.items():
        assert (res / "raw" / subject / "T1w.nii.gz").read_bytes() == source.read_bytes()
        assert not (res / "raw" / subject / "brainmask.nii.gz").exists(), "the source ships no mask"
        hr = nib.load(res / "hr" / subject / "brainmask.nii.gz")
        start = np.rint(np.linalg.solve(affine, hr.affine)[:3, 3]).astype(int)
        truth, _ = crop_or_pad(masks[subject], affine, tuple(start), hr.shape)
        assert dice(np.asarray(hr.dataobj) > 0, truth > 0) > 0.95
        assert "brain mask estimated" in (res / "logs" / "skullstrip" / f"{subject}.log").read_text()
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in root.rglob("*.nii.gz")}
    assert after == before, "inputs are only read"


def test_local_pattern_with_masks_uses_the_given_masks(tmp_path):
    data = tmp_path / "scans"
    base = make_head_phantom(4, seed=6)
    for subject in ("p01", "p02", "p03"):
        save_volume(data / subject / "T1.nii.gz", base.t1, base.affine)
        save_volume(data / "masks" / f"{subject}.nii.gz", base.mask, base.affine, dtype=np.uint8)
    local = {"t1": str(data / "{subject}" / "T1.nii.gz"), "mask": str(data / "masks" / "{subject}.nii.gz")}
    config = write_config(tmp_path / "pattern.yaml", source="local", local=local)
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_snakemake(workdir, "results/hr/p02/brainmask.nii.gz", config=config)
    res = workdir / "results"
    assert (res / "raw" / "p02" / "brainmask.nii.gz").read_bytes() == (data / "masks" / "p02.nii.gz").read_bytes()
    assert np.asarray(nib.load(res / "hr" / "p02" / "brainmask.nii.gz").dataobj).sum() == base.mask.sum()
    assert "brain mask from the source" in (res / "logs" / "skullstrip" / "p02.log").read_text()


def test_hcp_subject_list_errors_stop_the_workflow_before_any_job(tmp_path):
    listing = tmp_path / "subjects.txt"
    listing.write_text("100307\n../../etc\n")
    config = write_config(tmp_path / "bad.yaml", source="hcp", hcp={"subjects_file": str(listing)})
    proc = run_snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0 and "line 2: '../../etc' is not an HCP subject ID" in proc.stdout + proc.stderr
    config = write_config(tmp_path / "bad2.yaml", source="hcp", hcp={"subjects": ["10030x"]})
    proc = run_snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0 and "10030x" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_openneuro_source_is_planned_without_network_or_credentials(tmp_path):
    listing = tmp_path / "subjects.txt"
    listing.write_text("# ds002748\nsub-02\nsub-03\n")
    openneuro = {"accession": "ds002748", "subjects": ["sub-01"], "subjects_file": str(listing),
                 "endpoint_url": "http://127.0.0.1:9"}  # nothing listens there: a dry run sends no request
    config = write_config(tmp_path / "openneuro.yaml", source="openneuro", openneuro=openneuro)
    plan = run_snakemake(tmp_path, "-n", config=config, env=isolated_aws_env(tmp_path))
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts["fetch"] == 3 and counts["skullstrip"] == 3 and counts["report"] == 1
    for subject in ("sub-01", "sub-02", "sub-03"):
        assert f"results/raw/{subject}/T1w.nii.gz" in plan.stdout
    assert "results/raw/sub-01/brainmask.nii.gz" not in plan.stdout, "OpenNeuro ships no mask to fetch"
    assert not (tmp_path / "results").exists()


def test_openneuro_source_fetches_anonymously_through_the_workflow(openneuro_server, tmp_path):
    openneuro = {"accession": "ds002748", "subjects": ["sub-01", "sub-02", "sub-03"], "session": "ses-2",
                 "endpoint_url": openneuro_server.endpoint_url, "attempts": 1, "timeout_s": 20}
    config = write_config(tmp_path / "openneuro.yaml", source="openneuro", openneuro=openneuro)
    env = isolated_aws_env(tmp_path, AWS_PROFILE="no-such-profile")  # no credentials anywhere
    run_snakemake(tmp_path, "results/raw/sub-02/T1w.nii.gz", config=config, env=env)
    key = openneuro_server.key("sub-02", "ses-2/anat/sub-02_ses-2_T1w.nii.gz")
    assert (tmp_path / "results" / "raw" / "sub-02" / "T1w.nii.gz").read_bytes() == openneuro_server.objects[key]
    assert sorted(p.name for p in (tmp_path / "results" / "raw" / "sub-02").iterdir()) == ["T1w.nii.gz"]
    assert f"s3://openneuro.org/{key}" in (tmp_path / "results" / "logs" / "fetch" / "sub-02.log").read_text()
    # sub-01 has no ses-2: the job fails with the reason in its log, and leaves no file.
    failed = run_snakemake(tmp_path, "results/raw/sub-01/T1w.nii.gz", config=config, env=env, check=False)
    assert failed.returncode != 0 and not (tmp_path / "results" / "raw" / "sub-01" / "T1w.nii.gz").exists()
    assert "no T1w scan of ses-2 under s3://openneuro.org/ds002748/sub-01/" in (
        tmp_path / "results" / "logs" / "fetch" / "sub-01.log").read_text()


def test_openneuro_config_errors_stop_the_workflow_before_any_job(tmp_path):
    for openneuro, message in (
        ({"accession": "ds002748", "subjects": ["01"]}, "'01' does not match"),
        ({"subjects": ["sub-01"]}, "needs openneuro.accession"),
        ({"accession": "ds2748", "subjects": ["sub-01"]}, "'ds2748' does not match"),
        ({"accession": "ds002748"}, "source: openneuro needs subjects"),
    ):
        config = write_config(tmp_path / "bad.yaml", source="openneuro", openneuro=openneuro)
        proc = run_snakemake(tmp_path, "-n", config=config, check=False)
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, message
    assert not (tmp_path / "results").exists()
