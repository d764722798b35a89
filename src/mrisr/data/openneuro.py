"""Any public OpenNeuro dataset's T1w scans, from its S3 bucket without credentials.

OpenNeuro keeps the latest snapshot of every public dataset in
``s3://openneuro.org/<accession>/`` (region us-east-1) in BIDS layout:
``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_...]_T1w.nii.gz``.
The bucket is public, so every request is sent unsigned: no AWS account or
keys are needed, and none that happen to be configured are read or sent.

Subjects are listed in the config (``openneuro.subjects`` and/or
``openneuro.subjects_file``), not discovered when the workflow is parsed:
Snakemake parses the workflow again in every job, and a listing there would
send dozens of requests per job, need the network for a dry run, and let an
update of the dataset change the subject list (and so the split) in the
middle of a run. ``list_subjects`` (``mrisr openneuro-subjects``) writes the
list once.

Which T1w a subject contributes is found when it is fetched: the subject's
keys are listed and the first T1w file in path order is taken (a subject
without sessions first, then sessions in order), or the first of
``openneuro.session`` if set, as the ``local`` source does for a BIDS folder.
Downloads are verified and retried as ``data.remote`` describes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mrisr.data.local import BIDS_T1W
from mrisr.data.remote import (
    AccessDenied,
    FetchError,
    NotFound,
    Retry,
    check_nifti_3d,
    client_config,
    error_status,
    log_download,
    read_subject_list,
    verified_download,
    with_retries,
)
from mrisr.io import atomic_path

log = logging.getLogger("mrisr")

OPENNEURO_BUCKET = "openneuro.org"
OPENNEURO_REGION = "us-east-1"
ACCESSION = re.compile(r"ds[0-9]{6}")
SUBJECT = re.compile(r"sub-[A-Za-z0-9]{1,60}")
SESSION = re.compile(r"ses-[A-Za-z0-9]{1,60}")
# A T1w file's key below its subject's folder: [ses-<label>/]anat/<BIDS name>.
T1W_UNDER_SUBJECT = re.compile(r"(?:(?P<session>ses-[A-Za-z0-9]+)/)?anat/(?P<name>[^/]+)")


@dataclass(frozen=True)
class OpenNeuroSettings:
    """Which dataset and how to reach it; see config/config.schema.yaml (``openneuro``)."""

    accession: str
    bucket: str = OPENNEURO_BUCKET
    region: str = OPENNEURO_REGION
    endpoint_url: str | None = None
    session: str | None = None
    attempts: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.accession, str) or not ACCESSION.fullmatch(self.accession):
            raise ValueError(f"openneuro.accession: {self.accession!r} is not an OpenNeuro accession (ds and six digits, "
                             "e.g. ds002748)")
        if self.session is not None and not SESSION.fullmatch(str(self.session)):
            raise ValueError(f"openneuro.session: {self.session!r} is not a BIDS session (ses-<label>, e.g. ses-01)")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "OpenNeuroSettings":
        names = cls.__dataclass_fields__
        if not section.get("accession"):
            raise ValueError("source: openneuro needs openneuro.accession (e.g. ds002748)")
        return cls(**{k: v for k, v in section.items() if k in names})

    @property
    def retry(self) -> Retry:
        return Retry(self.attempts, self.backoff_s)

    def subject_prefix(self, subject: str) -> str:
        return f"{self.accession}/{validate_subject(subject)}/"


def validate_subject(subject: Any) -> str:
    """A BIDS subject ID, ``sub-<label>`` (letters and digits); anything else raises ``ValueError``."""
    if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
        raise ValueError(f"{subject!r} is not a BIDS subject ID (sub-<label>, label of letters and digits, e.g. sub-01)")
    return subject


def read_subjects(subjects: Iterable[Any] = (), subjects_file: str | os.PathLike | None = None) -> list[str]:
    """Subject IDs from ``openneuro.subjects`` and/or ``openneuro.subjects_file`` (as ``hcp.read_subjects``)."""
    return read_subject_list(subjects, subjects_file, validate_subject, "openneuro")


def s3_client(settings: OpenNeuroSettings) -> Any:
    """An S3 client that sends unsigned (anonymous) requests and reads no credentials or profile.

    The botocore session ignores ``AWS_PROFILE``, so a profile set for other
    work, even one that does not exist, neither breaks nor feeds it.
    """
    import botocore
    import botocore.session

    session = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
    return session.create_client(
        "s3", region_name=settings.region, endpoint_url=settings.endpoint_url or None,
        config=client_config(settings.timeout_s, signature_version=botocore.UNSIGNED),
    )


def explain_error(err: Exception, bucket: str, key: str) -> FetchError | None:
    """The specific error behind a non-transient S3 error response to an anonymous request, or None."""
    status, code = error_status(err)
    if not status:
        return None
    code = code or str(status)
    where = f"s3://{bucket}/{key}"
    if code == "NoSuchBucket":
        return NotFound(f"bucket {bucket} does not exist (404 {code}): check openneuro.bucket and openneuro.endpoint_url")
    if status == 404 or code in {"NoSuchKey", "NotFound"}:
        return NotFound(f"{where} does not exist (404 {code}): check openneuro.accession and the subject ID, or "
                        "the dataset changed since it was listed: list it again (mrisr openneuro-subjects)")
    if status in (401, 403) or code == "AccessDenied":
        return AccessDenied(f"{where}: access denied to an anonymous request ({status} {code}). OpenNeuro's public "
                            "datasets need no keys: is this dataset public, and does openneuro.endpoint_url (if "
                            "set) serve public objects?")
    return None


def list_keys(client: Any, settings: OpenNeuroSettings, prefix: str, delimiter: str = "") -> tuple[list[str], list[str]]:
    """(keys, common prefixes) below ``prefix``, every page, each request retried like a download."""
    keys: list[str] = []
    prefixes: list[str] = []
    token: str | None = None
    while True:
        request = {"Bucket": settings.bucket, "Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        request |= {"ContinuationToken": token} if token else {}
        page, _ = with_retries(lambda: client.list_objects_v2(**request), settings.bucket, prefix, settings.retry,
                               explain_error, "openneuro")
        keys += [item["Key"] for item in page.get("Contents", [])]
        prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return keys, prefixes


def t1w_keys(keys: Iterable[str], settings: OpenNeuroSettings, subject: str) -> list[str]:
    """The BIDS T1w files among ``keys`` of ``subject`` (of ``settings.session`` if set), in path order."""
    prefix = settings.subject_prefix(subject)
    found = []
    for key in keys:
        match = T1W_UNDER_SUBJECT.fullmatch(key[len(prefix):]) if key.startswith(prefix) else None
        name = BIDS_T1W.fullmatch(match["name"]) if match else None
        if name is None or name["subject"] != subject:
            continue  # not a T1w, or one filed under another subject
        session = match["session"]
        if session and f"_{session}_" not in match["name"]:
            continue  # filed under another session
        if settings.session is None or session == settings.session:
            found.append(key)
    return sorted(found)


def find_t1w(client: Any, settings: OpenNeuroSettings, subject: str) -> str:
    """The key of the T1w scan ``subject`` contributes (see the module docstring); ``NotFound`` if none."""
    prefix = settings.subject_prefix(subject)
    keys, _ = list_keys(client, settings, prefix)
    found = t1w_keys(keys, settings, subject)
    if not found:
        which = f"of {settings.session} " if settings.session else ""
        raise NotFound(
            f"no T1w scan {which}under s3://{settings.bucket}/{prefix} ({len(keys)} objects there; wanted "
            f"[ses-<label>/]anat/{subject}[_...]_T1w.nii[.gz]): is {subject} a subject of {settings.accession} "
            f"with a T1w{' in that session' if settings.session else ''}? `mrisr openneuro-subjects "
            f"{settings.accession}` lists those that have one"
        )
    if len(found) > 1:
        log.info("%s has %d T1w scans; using %s", subject, len(found), found[0][len(prefix):])
    return found[0]


def fetch_subject(subject: str, settings: OpenNeuroSettings, out_t1: str | os.PathLike) -> str:
    """Download the T1w scan of ``subject`` to ``out_t1``, verified; returns its key."""
    client = s3_client(settings)
    key = find_t1w(client, settings, validate_subject(subject))
    start = time.perf_counter()
    result = verified_download(client, settings.bucket, key, out_t1, settings.retry, explain_error, "openneuro",
                               check=check_nifti_3d)
    log_download(subject, settings.bucket, key, out_t1, result, start)
    return key


def list_subjects(settings: OpenNeuroSettings) -> dict[str, str]:
    """{subject: key of the T1w it contributes} for every subject of the dataset with a T1w (of the session)."""
    client = s3_client(settings)
    _, folders = list_keys(client, settings, f"{settings.accession}/", delimiter="/")
    if not folders:
        raise NotFound(f"s3://{settings.bucket}/{settings.accession}/ is empty: is {settings.accession} a public "
                       "OpenNeuro dataset (check openneuro.accession and openneuro.bucket)?")
    found = {}
    for folder in sorted(folders):
        subject = folder[len(settings.accession) + 1:].rstrip("/")
        if SUBJECT.fullmatch(subject):
            keys = t1w_keys(list_keys(client, settings, folder)[0], settings, subject)
            if keys:
                found[subject] = keys[0]
    return found


def write_subjects_file(settings: OpenNeuroSettings, path: str | os.PathLike) -> dict[str, str]:
    """Write the dataset's subjects with a T1w to ``path`` (``openneuro.subjects_file``'s format), atomically."""
    found = list_subjects(settings)
    if not found:
        raise NotFound(f"no subject of {settings.accession} in s3://{settings.bucket} has a T1w scan"
                       f"{' in ' + settings.session if settings.session else ''}")
    where = settings.endpoint_url or f"s3://{settings.bucket}"
    header = (f"# OpenNeuro {settings.accession}: the {len(found)} subjects with a T1w scan"
              f"{' in ' + settings.session if settings.session else ''}, listed from {where} on "
              f"{time.strftime('%Y-%m-%d')}\n")
    with atomic_path(path) as tmp:
        tmp.write_text(header + "".join(f"{subject}\n" for subject in found))
    return found
