"""HCP-1200 downloads against a real S3 API on loopback (moto's server, tests/s3_server.py).

Every failure mode of the issue has a test here: bytes match; missing
credentials, 403 and 404 each give their message; a cut transfer leaves
nothing and a re-run completes; corrupted bytes are caught by the MD5; the
network failing every attempt is an error after the retries.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from s3_server import BUCKET, CHECKSUMMED_KEY, DENIED, MULTIPART_KEY, NO_T1, NOT_A_NIFTI, READABLE

from mrisr.data.hcp import (
    AccessDenied,
    CredentialsMissing,
    FetchError,
    NotFound,
    Retry,
    S3Settings,
    TransferFailed,
    download,
    fetch_subject,
    read_subjects,
    s3_client,
    validate_subject,
)


def settings_for(server, **overrides) -> S3Settings:
    fields = {"endpoint_url": server.endpoint_url, "attempts": 1, "backoff_s": 0.0, "timeout_s": 10.0}
    return S3Settings(**(fields | overrides))


def outputs_in(folder: Path) -> dict[str, Path]:
    return {"t1": folder / "T1w.nii.gz", "mask": folder / "brainmask.nii.gz"}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def keys(hcp_server, aws_env):
    """The reader's keys in the environment (the standard chain's first place)."""
    aws_env(AWS_ACCESS_KEY_ID=hcp_server.access_key_id, AWS_SECRET_ACCESS_KEY=hcp_server.secret_access_key)
    return hcp_server


def test_subject_ids_are_six_digits_and_nothing_else():
    assert validate_subject("100307") == "100307"
    assert validate_subject(100307) == "100307", "YAML reads unquoted IDs as integers"
    for bad in ("10030", "1003070", "010030", "../100307", "100307/", "10030a", " 100307", True, None, 100307.0):
        with pytest.raises(ValueError, match="not an HCP subject ID"):
            validate_subject(bad)


def test_subject_list_from_config_and_file(tmp_path):
    listing = tmp_path / "subjects.txt"
    listing.write_text("# HCP-1200 subjects\n100408\n\n101915  # a comment\n")
    assert read_subjects([100307], listing) == ["100307", "100408", "101915"]
    listing.write_text("100408\n1004O8\n")
    with pytest.raises(ValueError, match=r"line 2: '1004O8' is not an HCP subject ID"):
        read_subjects([], listing)
    listing.write_text("100307\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_subjects(["100307"], listing)
    with pytest.raises(ValueError, match="needs subjects"):
        read_subjects([], None)
    with pytest.raises(ValueError, match="no such file"):
        read_subjects([], tmp_path / "missing.txt")


def test_fetch_writes_the_exact_bytes_verified_by_md5(keys, tmp_path, caplog):
    out = tmp_path / "raw" / READABLE[0]
    out.mkdir(parents=True)
    stale = out / ".T1w.nii.gz.abcd1234.nii.gz"  # what a killed earlier run leaves behind
    stale.write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="mrisr"):
        fetch_subject(READABLE[0], settings_for(keys), outputs_in(out))
    for name, path in outputs_in(out).items():
        assert path.read_bytes() == keys.objects[keys.key(READABLE[0], name)]
    assert leftovers(out) == ["T1w.nii.gz", "brainmask.nii.gz"], "stale and temporary files are gone"
    assert caplog.text.count("verified: MD5") == 2
    assert keys.secret_access_key not in caplog.text and keys.access_key_id not in caplog.text


def test_credentials_from_a_named_profile(hcp_server, aws_env, tmp_path):
    (tmp_path / "aws_credentials").write_text(
        f"[hcp]\naws_access_key_id = {hcp_server.access_key_id}\naws_secret_access_key = {hcp_server.secret_access_key}\n"
    )
    fetch_subject(READABLE[1], settings_for(hcp_server, profile="hcp"), {"mask": tmp_path / "m.nii.gz"})
    assert (tmp_path / "m.nii.gz").read_bytes() == hcp_server.objects[hcp_server.key(READABLE[1], "mask")]
    with pytest.raises(CredentialsMissing, match="profile 'nope'.*Amazon S3 Access"):
        s3_client(settings_for(hcp_server, profile="nope"))


def test_missing_credentials_say_how_to_get_hcp_keys(hcp_server, aws_env, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(CredentialsMissing) as err:
        fetch_subject(READABLE[0], settings_for(hcp_server), outputs_in(out))
    message = str(err.value)
    assert "no AWS credentials" in message
    assert "ConnectomeDB" in message and "Amazon S3 Access" in message and "AWS_ACCESS_KEY_ID" in message
    assert leftovers(out) == []


def test_403_for_a_refused_object_says_to_accept_the_terms(keys, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(AccessDenied, match=r"access denied \(403 AccessDenied\).*Data Use Terms"):
        fetch_subject(DENIED, settings_for(keys), outputs_in(out))
    assert leftovers(out) == []


def test_403_for_unknown_keys_and_for_a_wrong_secret(hcp_server, aws_env, tmp_path):
    aws_env(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY="not-a-real-secret")
    with pytest.raises(AccessDenied, match="does not know this access key ID.*Amazon S3 Access"):
        fetch_subject(READABLE[0], settings_for(hcp_server), outputs_in(tmp_path / "a"))
    aws_env(AWS_ACCESS_KEY_ID=hcp_server.access_key_id, AWS_SECRET_ACCESS_KEY="the-wrong-secret")
    with pytest.raises(AccessDenied, match="secret access key does not match") as err:
        fetch_subject(READABLE[0], settings_for(hcp_server), outputs_in(tmp_path / "b"))
    assert "the-wrong-secret" not in str(err.value)
    assert leftovers(tmp_path / "a") == [] and leftovers(tmp_path / "b") == []


def test_404_names_the_subject_and_the_file(keys, tmp_path):
    with pytest.raises(NotFound, match=r"s3://hcp-openaccess/HCP_1200/999999/T1w/T1w_acpc_dc_restore.nii.gz does not exist \(404 NoSuchKey\).*999999"):
        fetch_subject("999999", settings_for(keys), outputs_in(tmp_path / "raw"))
    with pytest.raises(NotFound, match="bucket no-such-bucket does not exist"):
        fetch_subject(READABLE[0], settings_for(keys, bucket="no-such-bucket"), outputs_in(tmp_path / "raw"))
    assert leftovers(tmp_path / "raw") == []


def test_a_cut_transfer_leaves_nothing_and_a_rerun_completes(keys, faulty_proxy, tmp_path):
    out = tmp_path / "raw"
    settings = settings_for(keys, endpoint_url=faulty_proxy.url)
    faulty_proxy.spoil("cut")
    with pytest.raises(TransferFailed, match="failed 1 times.*re-running the workflow fetches this subject again"):
        fetch_subject(READABLE[0], settings, outputs_in(out))
    assert faulty_proxy.spoiled == 1
    assert leftovers(out) == [], "no partial file, no temporary file"
    faulty_proxy.spoil("pass")
    fetch_subject(READABLE[0], settings, outputs_in(out))
    for name, path in outputs_in(out).items():
        assert path.read_bytes() == keys.objects[keys.key(READABLE[0], name)]


def test_transient_failures_are_retried_with_exponential_backoff(keys, faulty_proxy, tmp_path):
    client = s3_client(settings_for(keys, endpoint_url=faulty_proxy.url))
    key = keys.key(READABLE[2], "t1")
    pauses: list[float] = []
    faulty_proxy.spoil("cut", count=2)
    result = download(client, BUCKET, key, tmp_path / "t1.nii.gz", retry=Retry(3, 0.5, pauses.append))
    assert result["attempts"] == 3 and pauses == [0.5, 1.0]
    assert (tmp_path / "t1.nii.gz").read_bytes() == keys.objects[key]


def test_corrupted_bytes_are_caught_by_the_md5(keys, faulty_proxy, tmp_path):
    client = s3_client(settings_for(keys, endpoint_url=faulty_proxy.url))
    key = keys.key(READABLE[0], "mask")
    faulty_proxy.spoil("corrupt")
    with pytest.raises(TransferFailed, match="failed 2 times, last with: MD5 .* is not the ETag"):
        download(client, BUCKET, key, tmp_path / "mask.nii.gz", retry=Retry(2, 0.0))
    assert faulty_proxy.spoiled == 2 and leftovers(tmp_path) == []
    # An object stored with a flexible checksum is also checked by botocore; same outcome.
    with pytest.raises(TransferFailed, match="failed 2 times, last with: Expected checksum"):
        download(client, BUCKET, CHECKSUMMED_KEY, tmp_path / "object.bin", retry=Retry(2, 0.0))
    assert faulty_proxy.spoiled == 4 and leftovers(tmp_path) == []
    faulty_proxy.spoil("pass")
    download(client, BUCKET, CHECKSUMMED_KEY, tmp_path / "object.bin", retry=Retry(1))
    assert (tmp_path / "object.bin").read_bytes() == keys.objects[CHECKSUMMED_KEY]


def test_network_failure_after_every_attempt(keys, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # a port nothing listens on once closed
    settings = settings_for(keys, endpoint_url=f"http://127.0.0.1:{port}", attempts=3)
    pauses: list[float] = []
    client = s3_client(settings)
    with pytest.raises(TransferFailed, match="failed 3 times.*Could not connect.*Check the network"):
        download(client, BUCKET, keys.key(READABLE[0], "t1"), tmp_path / "t1.nii.gz", retry=Retry(3, 0.1, pauses.append))
    assert pauses == [0.1, 0.2] and leftovers(tmp_path) == []


def test_multipart_objects_are_verified_by_size(keys, tmp_path):
    client = s3_client(settings_for(keys))
    result = download(client, BUCKET, MULTIPART_KEY, tmp_path / "object.bin", retry=Retry(1))
    assert result["md5"] is None, "a multipart ETag is not an MD5 of the bytes"
    assert (tmp_path / "object.bin").read_bytes() == keys.objects[MULTIPART_KEY]


def test_an_object_that_is_not_a_nifti_is_refused(keys, tmp_path):
    with pytest.raises(FetchError, match="T1w_acpc_dc_restore.nii.gz: the downloaded object is not a NIfTI file"):
        fetch_subject(NOT_A_NIFTI, settings_for(keys), {"t1": tmp_path / "T1w.nii.gz"})
    assert leftovers(tmp_path) == []


# --- mrisr hcp-subjects: the subject list from the bucket ----------------------------------

def test_subject_folders_are_listed_page_by_page(keys):
    from mrisr.data.hcp import subject_folders

    settings = settings_for(keys)
    folders, pages = subject_folders(s3_client(settings), settings, page_size=2)
    assert folders == sorted(READABLE + (DENIED, NOT_A_NIFTI, NO_T1)), "the documentation folder is no subject"
    assert pages == 4, "7 folders, 2 a page"  # HCP_1200's ~1,206 folders take 2 pages of 1,000
    assert subject_folders(s3_client(settings), settings)[1] == 1


def test_hcp_subjects_writes_the_subjects_with_a_t1w_for_subjects_file(keys, tmp_path, caplog, capsys, monkeypatch):
    from mrisr import cli
    from mrisr.data import hcp

    pages, listed = [], hcp.subject_folders

    def small_pages(client, settings, page_size):  # 3 folders a page: pagination with a handful of subjects
        folders, count = listed(client, settings, page_size=3)
        pages.append(count)
        return folders, count

    monkeypatch.setattr(hcp, "subject_folders", small_pages)
    out = tmp_path / "subjects.txt"
    with caplog.at_level(logging.INFO, logger="mrisr"):
        code = cli.main(["hcp-subjects", "--out", str(out), "--endpoint-url", keys.endpoint_url, "--workers", "3"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    assert pages == [3], "more than one page"
    with_t1 = sorted(READABLE + (DENIED, NOT_A_NIFTI))  # a T1w object exists; reading it is fetch's business
    assert read_subjects(subjects_file=out) == with_t1 and NO_T1 not in read_subjects(subjects_file=out)
    assert f"without one: {NO_T1}" in out.read_text()
    assert f"5 of 6 subjects have a T1w: {out}" in stderr
    for text in (out.read_text(), stderr, caplog.text):
        assert keys.access_key_id not in text and keys.secret_access_key not in text


def test_hcp_subjects_errors_name_the_cause_and_write_nothing(hcp_server, aws_env, tmp_path, capsys):
    from mrisr import cli

    out = tmp_path / "subjects.txt"
    args = ["hcp-subjects", "--out", str(out), "--endpoint-url", hcp_server.endpoint_url]
    assert cli.main(args) == 2
    assert "no AWS credentials found" in capsys.readouterr().err
    aws_env(AWS_ACCESS_KEY_ID=hcp_server.access_key_id, AWS_SECRET_ACCESS_KEY="the-wrong-secret")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "secret access key does not match" in err and "the-wrong-secret" not in err
    aws_env(AWS_SECRET_ACCESS_KEY=hcp_server.secret_access_key)
    assert cli.main([*args, "--prefix", "HCP_900"]) == 2
    assert "no subject folder under s3://hcp-openaccess/HCP_900/ holds a T1w" in capsys.readouterr().err
    assert not out.exists()
