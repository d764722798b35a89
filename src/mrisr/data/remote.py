"""What the S3 sources (``hcp``, ``openneuro``) share: subject lists, retried and verified downloads.

A download goes to a temporary file beside the target, is checked against the
object's size (and MD5, when the ETag of a single-part upload is one) and only
then renamed onto the target, so an interrupted or corrupted transfer never
leaves a file that looks complete. Transient failures (connection errors, cut
or corrupted transfers, throttling, 5xx) are retried with exponential
backoff; permission and missing-object errors are not: each source turns
them into a ``FetchError`` subclass whose message says what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from mrisr.io import atomic_path

log = logging.getLogger("mrisr")

CHUNK_BYTES = 1 << 20
T = TypeVar("T")
# Turns a non-transient error of a request on s3://bucket/key into the source's own error, or None.
Explain = Callable[[Exception, str, str], "FetchError | None"]


class FetchError(RuntimeError):
    """A subject could not be fetched; the message says why and what to do."""


class CredentialsMissing(FetchError):
    """No AWS credentials were found (or the named profile does not exist)."""


class AccessDenied(FetchError):
    """The server refused the credentials or this object (HTTP 403)."""


class NotFound(FetchError):
    """No such bucket, subject or file (HTTP 404)."""


class TransferFailed(FetchError):
    """The transfer kept failing (network, cut or corrupted transfers) after every attempt."""


class _Corrupt(Exception):
    """A transfer that completed but whose bytes do not match the object (retried)."""


def read_subject_list(
    subjects: Iterable[Any], subjects_file: str | os.PathLike | None, validate: Callable[[Any], str], section: str,
) -> list[str]:
    """Subject IDs from a list and/or a file (one per line; blank lines and ``#`` comments ignored).

    Every ID goes through ``validate`` (which raises ``ValueError``); duplicates
    are an error (they would be one subject counted twice). The order is kept:
    the split does not depend on it. ``section`` names the config section in messages.
    """
    found: list[tuple[str, str]] = [(validate(s), f"{section}.subjects") for s in subjects]
    if subjects_file:
        path = Path(subjects_file)
        if not path.is_file():
            raise ValueError(f"{section}.subjects_file {path}: no such file")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                try:
                    found.append((validate(entry), f"{path}:{number}"))
                except ValueError as err:
                    raise ValueError(f"{path} line {number}: {err}") from None
    seen: dict[str, str] = {}
    for subject, where in found:
        if subject in seen:
            raise ValueError(f"subject {subject} is listed twice ({seen[subject]} and {where})")
        seen[subject] = where
    if not seen:
        raise ValueError(f"source: {section} needs subjects: set {section}.subjects or {section}.subjects_file")
    return list(seen)


def client_config(timeout_s: float, **options: Any) -> Any:
    """botocore's client config: one try per request (retries are ``with_retries``'), the timeouts, ``options``."""
    from botocore.config import Config

    return Config(retries={"total_max_attempts": 1}, connect_timeout=timeout_s, read_timeout=timeout_s, **options)


def error_status(err: Exception) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a botocore ``ClientError``; (0, "") for anything else."""
    from botocore.exceptions import ClientError

    if not isinstance(err, ClientError):
        return 0, ""
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status, err.response.get("Error", {}).get("Code", "")


def is_transient(err: Exception) -> bool:
    """Whether a failed request may succeed if tried again."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        FlexibleChecksumError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    # Cut or corrupted transfers (our size/MD5 checks, or botocore's own checksum
    # where the object has one) are as transient as a dropped connection.
    transfer = (_Corrupt, FlexibleChecksumError, IncompleteReadError, ResponseStreamingError)
    if isinstance(err, transfer + (ConnectionError, HTTPClientError)):
        return True
    if isinstance(err, ClientError):
        status, code = error_status(err)
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "Throttling"}
    return False


@dataclass(frozen=True)
class Retry:
    """How often a transfer is tried (``attempts`` in all) and how long to wait between tries:
    ``backoff_s * 2**k`` seconds before try k + 2, at most 60 s, through ``sleep``."""

    attempts: int = 5
    backoff_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def pause(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return min(60.0, self.backoff_s * 2 ** (attempt - 2))


def with_retries(
    action: Callable[[], T], bucket: str, key: str, retry: Retry, explain: Explain, section: str,
) -> tuple[T, int]:
    """``action()`` on ``s3://bucket/key``, retried on transient failures; (its result, attempts used).

    A ``FetchError`` from the action (a check that refused the file) is raised
    with the object's address; a non-transient error becomes ``explain``'s
    error when it has one; after ``retry.attempts`` transient failures,
    ``TransferFailed``. ``section`` is the config section named in the advice.
    """
    last: Exception | None = None
    for attempt in range(1, max(1, retry.attempts) + 1):
        if attempt > 1:
            pause = retry.pause(attempt)
            log.warning("s3://%s/%s: attempt %d failed (%s); retrying in %.1f s", bucket, key, attempt - 1, last, pause)
            retry.sleep(pause)
        try:
            return action(), attempt
        except Exception as err:  # classified below: specific, transient or unexpected
            if isinstance(err, FetchError):  # the check refused the file
                raise type(err)(f"s3://{bucket}/{key}: {err}") from None
            specific = explain(err, bucket, key)
            if specific is not None:
                raise specific from None
            if not is_transient(err):
                raise
            last = err
    raise TransferFailed(
        f"s3://{bucket}/{key}: the transfer failed {retry.attempts} times, last with: {last}. Check the network "
        f"connection (and {section}.endpoint_url if set); nothing was written, and re-running the workflow "
        "fetches this subject again"
    )


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete temporary files an interrupted run left beside ``dest`` (``io.atomic_path`` names)."""
    for stale in dest.parent.glob(f".{dest.name}.*"):
        log.info("removing %s, left by an interrupted transfer", stale)
        stale.unlink(missing_ok=True)


def verified_download(
    client: Any, bucket: str, key: str, dest: str | os.PathLike, retry: Retry, explain: Explain, section: str,
    check: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Download ``s3://bucket/key`` to ``dest`` through a verified temporary file.

    Each attempt streams the object into a temporary file beside ``dest``
    while counting bytes and computing the MD5, compares them with the
    object's size and (single-part, non-KMS) ETag, and renames the file onto
    ``dest`` only if both match (and ``check(temporary_path)``, if given,
    raises nothing). Failures are handled by ``with_retries``.
    Returns what was verified: bytes, md5 (or None), attempts.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(dest)
    result, attempts = with_retries(lambda: _download_once(client, bucket, key, dest, check), bucket, key, retry,
                                    explain, section)
    return result | {"attempts": attempts}


def _download_once(client: Any, bucket: str, key: str, dest: Path, check: Callable[[Path], None] | None) -> dict[str, Any]:
    response = client.get_object(Bucket=bucket, Key=key)
    expected_size = int(response["ContentLength"])
    etag = str(response.get("ETag", "")).strip('"')
    # A single-part upload's ETag is the MD5 of the object unless it is KMS-encrypted;
    # a multipart upload's is '<md5 of part md5s>-<parts>' and says nothing about the bytes.
    md5_expected = etag if re.fullmatch(r"[0-9a-f]{32}", etag) and response.get("ServerSideEncryption") != "aws:kms" else None
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with atomic_path(dest) as tmp:
        try:
            with open(tmp, "wb") as fh:
                for chunk in response["Body"].iter_chunks(CHUNK_BYTES):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        finally:
            response["Body"].close()
        if size != expected_size:
            raise _Corrupt(f"received {size} bytes of {expected_size}")
        if md5_expected is not None and digest.hexdigest() != md5_expected:
            raise _Corrupt(f"MD5 {digest.hexdigest()} of the received bytes is not the ETag {md5_expected}")
        if check is not None:
            check(tmp)
    return {"bytes": size, "md5": md5_expected}


def check_nifti_3d(path: Path) -> None:
    """Raise ``FetchError`` unless ``path`` has the header of a 3D NIfTI (the data are not read)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as err:  # nibabel raises many types for broken files
        raise FetchError(f"the downloaded object is not a NIfTI file ({type(err).__name__}: {err})") from None
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise FetchError(f"the downloaded object is a NIfTI of shape {shape}, not a 3D volume")


def log_download(subject: str, bucket: str, key: str, dest: Any, result: dict[str, Any], start: float) -> None:
    """One line per verified download: what, where, how it was verified, attempts and time."""
    check = f"MD5 {result['md5']}" if result["md5"] else "size only (multipart ETag)"
    log.info(
        "%s: s3://%s/%s -> %s, %d bytes, verified: %s, %d attempt(s), %.1f s",
        subject, bucket, key, dest, result["bytes"], check, result["attempts"], time.perf_counter() - start,
    )
