"""Where a report's numbers come from: the resolved config (secrets removed), versions, commit, date,
and whether the running environment holds the exact versions of the repository's lock files."""

from __future__ import annotations

import datetime as dt
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distributions, version
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
# The lock files (pip-compile's, `make lock`), relative to the repository: the
# CPU build's first, then the CUDA build's; an environment is compared with the closer one.
LOCK_FILES = ("requirements/cpu.txt", "requirements/cuda.txt")
# Installed but never in a lock file: the installer itself, and this package.
UNLOCKED = {"pip", "mrisr"}
LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


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


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Scikit_Image`` is ``scikit-image``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: str | Path) -> dict[str, str]:
    """{name: version} of a lock file's ``name==version`` lines (hashes, comments and markers skipped)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = LOCK_PIN.match(line)
        if m:
            out[normalise(m.group(1))] = m.group(2)
    return out


def installed_versions() -> dict[str, str]:
    """{name: version} of every distribution the running Python imports from (the first of duplicates)."""
    out: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalise(name), dist.version)
    return out


def same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return a == b
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


@dataclass
class LockCheck:
    """The running environment against a lock file: ``lock`` is None when none was found (see ``note``)."""
    lock: str | None
    locked: int = 0
    differ: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, locked, installed or None)
    extra: list[tuple[str, str]] = field(default_factory=list)  # installed, not in the lock: (name, version)
    note: str = ""

    @property
    def matches(self) -> bool:
        return self.lock is not None and not self.differ


def lock_check(repo: str | Path | None, installed: Mapping[str, str] | None = None,
               lock_files: Sequence[str] = LOCK_FILES) -> LockCheck:
    """Compare the installed versions with each of the repository's lock files; return the closer.

    A package differs when the lock pins another version or it is not installed;
    packages installed beyond the lock (``extra``) do not make it differ.
    """
    if repo is None:
        return LockCheck(None, note="unknown (no source directory given)")
    found = [f for f in lock_files if (Path(repo) / f).is_file()]
    if not found:
        return LockCheck(None, note=f"no lock file found ({', '.join(lock_files)} under {repo})")
    have = {normalise(k): v for k, v in (installed_versions() if installed is None else installed).items()}
    checks = []
    for name in found:
        locked = locked_versions(Path(repo) / name)
        differ = [(pkg, ver, have.get(pkg)) for pkg, ver in sorted(locked.items())
                  if pkg not in have or not same_version(have[pkg], ver)]
        extra = sorted((pkg, ver) for pkg, ver in have.items() if pkg not in locked and pkg not in UNLOCKED)
        checks.append(LockCheck(name, len(locked), differ, extra))
    return min(checks, key=lambda c: len(c.differ))  # the first of equals: the CPU lock


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
