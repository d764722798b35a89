"""Where a report's numbers come from: the resolved config (secrets removed), versions, commit, date."""

from __future__ import annotations

import datetime as dt
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

REDACTED = "<redacted>"
# Config keys whose values must never be printed: credentials, tokens, and the
# names of credential profiles (e.g. an AWS profile for the HCP bucket).
SECRET_KEY = re.compile(
    r"secret|passw|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|auth|profile|session|cookie",
    re.IGNORECASE,
)
# Values that are credentials whatever their key is called: AWS access key IDs.
SECRET_VALUE = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# The packages whose versions decide the numbers and pictures of a run.
PACKAGES = (
    "mrisr", "torch", "numpy", "scipy", "nibabel", "nilearn", "scikit-image",
    "matplotlib", "pillow", "snakemake",
)


def redact(value: Any, key: str = "") -> Any:
    """A copy of a config (nested dicts and lists) with secret-looking keys and values replaced.

    A key matching ``SECRET_KEY`` has its whole value replaced (also a nested
    mapping: ``aws: {profile: ...}`` hides the profile, ``credentials: {...}``
    hides everything under it); a string matching ``SECRET_VALUE`` is replaced
    wherever it appears. Empty values (None, "") are kept: they show that no
    secret was set.
    """
    if key and SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str) and SECRET_VALUE.search(value):
        return SECRET_VALUE.sub(REDACTED, value)
    return value


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """{distribution: version} of the installed packages; 'not installed' where missing."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(repo: str | Path | None) -> str:
    """'<commit> (<branch>)', '+ uncommitted changes' when the tree is dirty; why not, when unknown."""
    if repo is None:
        return "unknown (no source directory given)"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except FileNotFoundError:
        return "unknown (git is not installed)"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return f"unknown ({repo} is not a git checkout)"
    try:
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        branch, dirty = "?", False
    return f"{commit} ({branch})" + (", with uncommitted changes" if dirty else "")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def split_counts(splits: Mapping[str, str]) -> dict[str, int]:
    """{split: number of subjects} in train, val, test order."""
    return {name: sum(1 for v in splits.values() if v == name) for name in ("train", "val", "test")}
