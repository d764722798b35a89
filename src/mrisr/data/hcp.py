"""HCP-1200 from its S3 bucket: subject lists and safe, verified downloads.

The Human Connectome Project's 1200-subject release lies in
``s3://hcp-openaccess/HCP_1200/{subject}/`` (region us-east-1). For each
subject the workflow takes the preprocessed T1 (``T1w/T1w_acpc_dc_restore.nii.gz``,
0.7 mm, 260 x 311 x 260) and FreeSurfer's brain mask on the same grid
(``T1w/brainmask_fs.nii.gz``).

Reading the bucket needs the AWS keys HCP issues (see ``HOW_TO_GET_KEYS``).
They are found by boto3's standard chain (environment variables, shared
credentials and config files, ...) or taken from a named profile; they are
never passed as arguments, written to a file or logged by this module.

Downloads are verified and retried as ``data.remote`` describes; credentials,
permission and missing-object errors are not retried, and each raises its own
``FetchError`` subclass with a message that says what to do.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mrisr.data.remote import (  # noqa: F401 (the errors and Retry are part of this module's interface)
    AccessDenied,
    CredentialsMissing,
    FetchError,
    NotFound,
    Retry,
    TransferFailed,
    check_nifti_3d,
    client_config,
    error_status,
    is_transient,
    log_download,
    read_subject_list,
    verified_download,
)

from mrisr.io import atomic_path

log = logging.getLogger("mrisr")

HCP_BUCKET = "hcp-openaccess"
HCP_PREFIX = "HCP_1200"
HCP_REGION = "us-east-1"
# What the workflow takes from each subject's folder, by the name fetch gives it.
HCP_FILES: dict[str, str] = {
    "t1": "T1w/T1w_acpc_dc_restore.nii.gz",
    "mask": "T1w/brainmask_fs.nii.gz",
}
HCP_SUBJECT = re.compile(r"[1-9][0-9]{5}")

HOW_TO_GET_KEYS = (
    "HCP data on S3 are read with AWS keys issued by the Human Connectome Project: log in to "
    "ConnectomeDB (https://db.humanconnectome.org), accept the Open Access Data Use Terms of the "
    "WU-Minn HCP 1200 Subjects release, and create your key pair with 'Amazon S3 Access' on that "
    "release's page. Then either export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or store the "
    "keys as a profile in ~/.aws/credentials and set hcp.profile to the profile's name."
)


@dataclass(frozen=True)
class S3Settings:
    """Where the release lies and how to reach it; see config/config.schema.yaml (``hcp``)."""

    bucket: str = HCP_BUCKET
    prefix: str = HCP_PREFIX
    region: str = HCP_REGION
    endpoint_url: str | None = None
    profile: str | None = None
    attempts: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 60.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "S3Settings":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in section.items() if k in names})

    def key(self, subject: str, name: str) -> str:
        """The object key of file ``name`` (a key of ``HCP_FILES``) of ``subject``."""
        return f"{self.prefix}/{validate_subject(subject)}/{HCP_FILES[name]}"


def validate_subject(subject: Any) -> str:
    """An HCP subject ID as a string: six digits (``100307``); anything else raises ``ValueError``.

    YAML reads unquoted IDs as integers, so integers are accepted too.
    """
    text = str(subject) if isinstance(subject, int) and not isinstance(subject, bool) else subject
    if not isinstance(text, str) or not HCP_SUBJECT.fullmatch(text):
        raise ValueError(f"{subject!r} is not an HCP subject ID (six digits, e.g. 100307)")
    return text


def read_subjects(subjects: Iterable[Any] = (), subjects_file: str | os.PathLike | None = None) -> list[str]:
    """Subject IDs from a list and/or a file (one per line; blank lines and ``#`` comments ignored).

    Every ID is validated; duplicates are an error (they would be one subject
    counted twice). The order is kept: the split does not depend on it.
    """
    return read_subject_list(subjects, subjects_file, validate_subject, "hcp")


def s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client with credentials from the standard chain or ``settings.profile``.

    Raises ``CredentialsMissing`` (with ``HOW_TO_GET_KEYS``) before any request
    is made when no credentials can be found. Retries are left to ``download``.
    """
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.session.Session(profile_name=settings.profile or None, region_name=settings.region)
    except ProfileNotFound:
        raise CredentialsMissing(
            f"AWS profile {settings.profile!r} (hcp.profile) is not in the AWS credentials or config "
            f"files. {HOW_TO_GET_KEYS}"
        ) from None
    credentials = session.get_credentials()
    if credentials is None:
        raise CredentialsMissing(f"no AWS credentials found to read s3://{settings.bucket}. {HOW_TO_GET_KEYS}")
    log.info("AWS credentials from %s%s", credentials.method, f" (profile {settings.profile})" if settings.profile else "")
    return session.client("s3", endpoint_url=settings.endpoint_url or None, config=client_config(settings.timeout_s))


def _client_error(err: Exception, bucket: str, key: str, subject: str) -> FetchError | None:
    """The specific error behind a non-transient S3 error response, or None."""
    status, code = error_status(err)
    if not status:
        return None
    code = code or str(status)
    where = f"s3://{bucket}/{key}"
    if code == "InvalidAccessKeyId":
        return AccessDenied(
            f"{where}: the server does not know this access key ID (403 {code}): the keys may have been "
            f"revoked or not be HCP keys. {HOW_TO_GET_KEYS}"
        )
    if code == "SignatureDoesNotMatch":
        return AccessDenied(
            f"{where}: the secret access key does not match the access key ID (403 {code}); "
            "check that both come from the same HCP key pair"
        )
    if status == 403 or code in {"AccessDenied", "AllAccessDisabled", "ExpiredToken", "InvalidToken"}:
        return AccessDenied(
            f"{where}: access denied (403 {code}). The keys were accepted but may not read this object: "
            "HCP keys only work once the Open Access Data Use Terms of the WU-Minn HCP 1200 Subjects "
            "release have been accepted on ConnectomeDB (https://db.humanconnectome.org); accept them, "
            "then create the keys again under 'Amazon S3 Access' if they predate the acceptance"
        )
    if code == "NoSuchBucket":
        return NotFound(f"bucket {bucket} does not exist (404 {code}): check hcp.bucket and hcp.endpoint_url")
    if status == 404 or code in {"NoSuchKey", "NotFound"}:
        return NotFound(
            f"{where} does not exist (404 {code}): is {subject} an HCP-1200 subject with structural "
            "scans (1,113 of the 1,206 subjects have a T1w), and is the subject ID right?"
        )
    return None


def download(
    client: Any,
    bucket: str,
    key: str,
    dest: str | os.PathLike,
    retry: Retry = Retry(),
    subject: str = "",
    check: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Download ``s3://bucket/key`` to ``dest`` verified and retried (``remote.verified_download``),
    with HCP's messages for its errors. Returns what was verified: bytes, md5 (or None), attempts."""
    def explain(err: Exception, bucket: str, key: str) -> FetchError | None:
        return _client_error(err, bucket, key, subject)

    return verified_download(client, bucket, key, dest, retry, explain, "hcp", check)


def fetch_subject(subject: str, settings: S3Settings, outputs: Mapping[str, str | os.PathLike]) -> None:
    """Download the files of ``subject`` named in ``outputs`` (keys of ``HCP_FILES``) to their paths."""
    subject = validate_subject(subject)
    unknown = set(outputs) - set(HCP_FILES)
    if unknown:
        raise ValueError(f"unknown HCP files {sorted(unknown)}; known: {', '.join(HCP_FILES)}")
    client = s3_client(settings)
    for name, dest in outputs.items():
        key = settings.key(subject, name)
        start = time.perf_counter()
        result = download(client, settings.bucket, key, dest, Retry(settings.attempts, settings.backoff_s),
                          subject=subject, check=check_nifti_3d)
        log_download(subject, settings.bucket, key, dest, result, start)


# --- the subject list: every subject folder of the release that holds a T1w ----------------

def _s3_call(call: Callable[[], Any], retry: Retry, bucket: str, where: str) -> Any:
    """``call()``, retried on transient failures as ``download`` is; other S3 errors raise their ``FetchError``."""
    last: Exception | None = None
    for attempt in range(1, max(1, retry.attempts) + 1):
        if attempt > 1:
            retry.sleep(retry.pause(attempt))
        try:
            return call()
        except Exception as err:  # classified below: specific, transient or unexpected
            specific = _client_error(err, bucket, where, "")
            if specific is not None:
                raise specific from None
            if not is_transient(err):
                raise
            last = err
    raise TransferFailed(f"s3://{bucket}/{where}: listing failed {retry.attempts} times, last with: {last}")


def subject_folders(client: Any, settings: S3Settings, page_size: int = 1000) -> tuple[list[str], int]:
    """The six-digit folder names under ``prefix/`` and the number of listing pages it took.

    One ListObjectsV2 with Delimiter='/' returns the folders, not the objects in
    them, up to ``page_size`` (S3: at most 1,000) per page; HCP_1200's ~1,200
    subject folders take two pages. Other names (files, documentation folders) are skipped.
    """
    retry = Retry(settings.attempts, settings.backoff_s)
    prefix, folders, pages, token = f"{settings.prefix}/", [], 0, None
    while True:
        args = {"Bucket": settings.bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": page_size}
        page = _s3_call(lambda: client.list_objects_v2(**args, **({"ContinuationToken": token} if token else {})),
                        retry, settings.bucket, prefix)
        pages += 1
        for common in page.get("CommonPrefixes", []):
            name = common["Prefix"][len(prefix):].rstrip("/")
            if HCP_SUBJECT.fullmatch(name):
                folders.append(name)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return sorted(folders), pages


def has_t1(client: Any, settings: S3Settings, subject: str) -> bool:
    """Whether ``subject``'s T1 (``HCP_FILES['t1']``) exists: one listing of its exact key.

    A listing with the key as prefix and MaxKeys=1 costs one request, as a
    HeadObject would, but needs only the s3:ListBucket permission (not
    GetObject, which HCP refuses for some keys), and an absent T1 is an empty
    answer, not a 404 to tell apart from other errors.
    """
    key = settings.key(subject, "t1")
    page = _s3_call(lambda: client.list_objects_v2(Bucket=settings.bucket, Prefix=key, MaxKeys=1),
                    Retry(settings.attempts, settings.backoff_s), settings.bucket, key)
    return any(item["Key"] == key for item in page.get("Contents", []))


def subjects_with_t1(settings: S3Settings, page_size: int = 1000, workers: int = 16) -> tuple[list[str], list[str]]:
    """(subjects with a T1w, every subject folder) of the release, sorted.

    1,206 folders cost two listing pages and 1,206 one-key listings, ``workers``
    at a time (a minute or so serially, seconds in parallel).
    """
    from concurrent.futures import ThreadPoolExecutor

    client = s3_client(settings)
    folders, pages = subject_folders(client, settings, page_size)
    log.info("s3://%s/%s/: %d subject folders in %d listing page(s)", settings.bucket, settings.prefix, len(folders), pages)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda s: has_t1(client, settings, s), folders))
    return [s for s, ok in zip(folders, found) if ok], folders


def write_subjects_file(path: str | os.PathLike, subjects: Sequence[str], folders: Sequence[str],
                        settings: S3Settings) -> None:
    """Write ``subjects`` one per line, under a comment saying where they come from (``read_subjects`` reads it)."""
    missing = sorted(set(folders) - set(subjects))
    lines = [f"# HCP subjects with {HCP_FILES['t1']} in s3://{settings.bucket}/{settings.prefix}/",
             f"# (mrisr hcp-subjects): {len(subjects)} of {len(folders)} subject folders",
             f"# without one: {' '.join(missing) if missing else 'none'}", *subjects]
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
