"""OpenNeuro downloads, anonymous, against a real S3 API on loopback laid out like OpenNeuro's bucket.

The server is moto's (tests/s3_server.py). Every test runs without AWS
credentials (the ``aws_env`` fixture empties the environment, and
``AWS_PROFILE`` names a profile that does not exist): a client that tried to
sign a request would fail. The failure modes are the HCP source's: transient
5xx retried with backoff, cut and corrupted transfers caught and retried,
missing objects named in the error, and no partial file left behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from s3_server import ACCESSION, OPENNEURO_BUCKET, PRIVATE_KEY, FaultyProxy

from mrisr.cli import main
from mrisr.data.openneuro import (
    AccessDenied,
    NotFound,
    OpenNeuroSettings,
    Retry,
    explain_error,
    fetch_subject,
    read_subjects,
    s3_client,
    validate_subject,
)
from mrisr.data.remote import TransferFailed, verified_download


@pytest.fixture
def anonymous(aws_env):
    """No credentials anywhere, and a profile that does not exist: only unsigned requests can work."""
    aws_env(AWS_PROFILE="no-such-profile")


def settings_for(url: str, **overrides) -> OpenNeuroSettings:
    fields = {"accession": ACCESSION, "endpoint_url": url, "attempts": 1, "backoff_s": 0.0, "timeout_s": 10.0}
    return OpenNeuroSettings(**(fields | overrides))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def download(url: str, key: str, dest: Path, retry: Retry):
    return verified_download(s3_client(settings_for(url)), OPENNEURO_BUCKET, key, dest, retry, explain_error, "openneuro")


def test_subject_ids_accession_and_session_are_validated(tmp_path):
    assert validate_subject("sub-01") == "sub-01" and validate_subject("sub-CON01") == "sub-CON01"
    for bad in ("01", 1, "sub-", "sub-01/", "sub-0_1", "../sub-01", "sub-01 ", None):
        with pytest.raises(ValueError, match="not a BIDS subject ID"):
            validate_subject(bad)
    for bad in ("ds2748", "DS002748", "ds002748/", None):
        with pytest.raises(ValueError, match="not an OpenNeuro accession"):
            OpenNeuroSettings(bad)
    with pytest.raises(ValueError, match="not a BIDS session"):
        OpenNeuroSettings(ACCESSION, session="1")
    with pytest.raises(ValueError, match="needs openneuro.accession"):
        OpenNeuroSettings.from_config({"accession": None})
    listing = tmp_path / "subjects.txt"
    listing.write_text("# ds002748\nsub-02\n\nsub-03  # a comment\n")
    assert read_subjects(["sub-01"], listing) == ["sub-01", "sub-02", "sub-03"]
    listing.write_text("sub-02\n02\n")
    with pytest.raises(ValueError, match=r"line 2: '02' is not a BIDS subject ID"):
        read_subjects([], listing)
    with pytest.raises(ValueError, match="source: openneuro needs subjects"):
        read_subjects([], None)
    with pytest.raises(ValueError, match="openneuro.subjects_file .*: no such file"):
        read_subjects([], tmp_path / "missing.txt")


def test_fetch_is_anonymous_and_writes_the_exact_bytes(openneuro_server, openneuro_proxy, anonymous, tmp_path, caplog):
    out = tmp_path / "raw" / "sub-01" / "T1w.nii.gz"
    with caplog.at_level(logging.INFO, logger="mrisr"):
        key = fetch_subject("sub-01", settings_for(openneuro_proxy.url), out)
    assert key == openneuro_server.key("sub-01", "anat/sub-01_T1w.nii.gz")
    assert out.read_bytes() == openneuro_server.objects[key]
    assert leftovers(out.parent) == ["T1w.nii.gz"]
    assert "verified: MD5" in caplog.text
    sent = bytes(openneuro_proxy.sent).lower()
    assert b"get /openneuro.org/ds002748/sub-01/anat/sub-01_t1w.nii.gz" in sent, "the proxy saw the requests"
    assert b"authorization:" not in sent and b"x-amz-security-token" not in sent, "requests are unsigned"


def test_the_first_t1w_in_path_order_or_the_chosen_session(openneuro_server, anonymous, tmp_path):
    url = openneuro_server.endpoint_url
    objects = openneuro_server.objects
    first = fetch_subject("sub-02", settings_for(url), tmp_path / "a.nii.gz")
    assert first.endswith("ses-1/anat/sub-02_ses-1_T1w.nii.gz")
    second = fetch_subject("sub-02", settings_for(url, session="ses-2"), tmp_path / "b.nii.gz")
    assert second.endswith("ses-2/anat/sub-02_ses-2_T1w.nii.gz")
    assert (tmp_path / "b.nii.gz").read_bytes() == objects[second] != objects[first]
    # Entities other than the subject and session (acq-mprage) are allowed.
    assert fetch_subject("sub-03", settings_for(url), tmp_path / "c.nii.gz").endswith("sub-03_acq-mprage_T1w.nii.gz")
    with pytest.raises(NotFound, match=r"no T1w scan of ses-3 under s3://openneuro.org/ds002748/sub-02/"):
        fetch_subject("sub-02", settings_for(url, session="ses-3"), tmp_path / "d.nii.gz")
    assert leftovers(tmp_path) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]


def test_missing_subjects_objects_and_buckets_are_named(openneuro_server, anonymous, tmp_path):
    url = openneuro_server.endpoint_url
    out = tmp_path / "raw"
    with pytest.raises(NotFound, match=r"no T1w scan under s3://openneuro.org/ds002748/sub-99/ \(0 objects.*sub-99"):
        fetch_subject("sub-99", settings_for(url), out / "sub-99.nii.gz")
    with pytest.raises(NotFound, match=r"no T1w scan under s3://openneuro.org/ds002748/sub-04/ \(1 objects"):
        fetch_subject("sub-04", settings_for(url), out / "sub-04.nii.gz")  # a functional scan only
    key = f"{ACCESSION}/sub-01/anat/sub-01_T2w.nii.gz"
    with pytest.raises(NotFound, match=rf"s3://openneuro.org/{key} does not exist \(404 NoSuchKey\)"):
        download(url, key, out / "t2.nii.gz", Retry(3, 0.0))
    with pytest.raises(AccessDenied, match=rf"s3://openneuro.org/{PRIVATE_KEY}: access denied to an anonymous request"):
        download(url, PRIVATE_KEY, out / "private.nii.gz", Retry(3, 0.0))
    with pytest.raises(NotFound, match="bucket no-such-bucket does not exist.*openneuro.bucket"):
        fetch_subject("sub-01", settings_for(url, bucket="no-such-bucket"), out / "sub-01.nii.gz")
    assert leftovers(out) == []


def test_transient_503s_are_retried_with_exponential_backoff(openneuro_server, openneuro_proxy, anonymous, tmp_path):
    key = openneuro_server.key("sub-03", "anat/sub-03_acq-mprage_T1w.nii.gz")
    pauses: list[float] = []
    openneuro_proxy.spoil("unavailable", count=2)
    result = download(openneuro_proxy.url, key, tmp_path / "t1.nii.gz", Retry(3, 0.5, pauses.append))
    assert result["attempts"] == 3 and pauses == [0.5, 1.0] and openneuro_proxy.spoiled == 2
    assert (tmp_path / "t1.nii.gz").read_bytes() == openneuro_server.objects[key]
    openneuro_proxy.spoil("unavailable")
    with pytest.raises(TransferFailed, match=r"failed 2 times, last with: An error occurred \(SlowDown\).*openneuro.endpoint_url"):
        download(openneuro_proxy.url, key, tmp_path / "again.nii.gz", Retry(2, 0.0))
    assert leftovers(tmp_path) == ["t1.nii.gz"]


def test_cut_and_corrupted_transfers_leave_nothing_and_are_retried(openneuro_server, openneuro_proxy, anonymous, tmp_path):
    out = tmp_path / "raw" / "T1w.nii.gz"
    settings = settings_for(openneuro_proxy.url)
    openneuro_proxy.spoil("cut")
    with pytest.raises(TransferFailed, match="failed 1 times.*re-running the workflow fetches this subject again"):
        fetch_subject("sub-01", settings, out)
    assert leftovers(out.parent) == [], "no partial file, no temporary file"
    openneuro_proxy.spoil("corrupt")
    with pytest.raises(TransferFailed, match="failed 2 times, last with: MD5 .* is not the ETag"):
        fetch_subject("sub-01", settings_for(openneuro_proxy.url, attempts=2), out)
    assert openneuro_proxy.spoiled == 3 and leftovers(out.parent) == []
    openneuro_proxy.spoil("corrupt", count=1)
    key = fetch_subject("sub-01", settings_for(openneuro_proxy.url, attempts=2), out)
    assert out.read_bytes() == openneuro_server.objects[key]


def test_failed_listings_are_retried_too(openneuro_server, anonymous, tmp_path):
    proxy = FaultyProxy(openneuro_server.endpoint_url, offset=100)  # spoils the listing, the first response
    try:
        for fault in ("unavailable", "cut"):
            proxy.spoil(fault, count=1)
            out = tmp_path / fault / "T1w.nii.gz"
            key = fetch_subject("sub-01", settings_for(proxy.url, attempts=2), out)
            assert out.read_bytes() == openneuro_server.objects[key]
        assert proxy.spoiled == 2
    finally:
        proxy.close()


def test_listing_a_dataset_writes_its_subjects_with_a_t1w(openneuro_server, anonymous, tmp_path, capsys):
    url = openneuro_server.endpoint_url
    listing = tmp_path / "subjects.txt"
    assert main(["openneuro-subjects", ACCESSION, "-o", str(listing), "--endpoint-url", url]) == 0
    assert read_subjects([], listing) == ["sub-01", "sub-02", "sub-03"], "sub-04 has no T1w"
    assert listing.read_text().startswith("# OpenNeuro ds002748: the 3 subjects with a T1w scan, listed from")
    assert main(["openneuro-subjects", ACCESSION, "-o", str(listing), "--endpoint-url", url, "--session", "ses-2"]) == 0
    assert read_subjects([], listing) == ["sub-02"]
    missing = tmp_path / "none.txt"
    assert main(["openneuro-subjects", "ds000000", "-o", str(missing), "--endpoint-url", url]) == 2
    assert "s3://openneuro.org/ds000000/ is empty" in capsys.readouterr().err
    assert main(["openneuro-subjects", "ds2748", "-o", str(missing)]) == 2
    assert "not an OpenNeuro accession" in capsys.readouterr().err
    assert not missing.exists()
