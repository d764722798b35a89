"""Local NIfTI folders: a glob pattern with a ``{subject}`` placeholder, or a BIDS dataset.

Subject IDs come from the paths and are validated (letters, digits, ``-`` and
``_``; they name folders under results/), so nothing odd reaches a path. The
files are only ever read.

- Pattern: ``/data/scans/{subject}/T1.nii.gz``; ``*`` and ``?`` match within
  one path component, ``{subject}`` may appear more than once (each time the
  same ID). Each subject must match exactly one file.
- BIDS: ``<root>/sub-<label>/[ses-<label>/]anat/sub-<label>[_<entity>-<value>...]_T1w.nii[.gz]``;
  the subject ID is ``sub-<label>``. A subject with several T1w scans
  (sessions, runs, acquisitions) contributes the first in sorted path
  order, so one subject is one scan and the split stays subject-level.
- Masks (optional): a pattern with ``{subject}``, e.g.
  ``/data/derivatives/{subject}/anat/{subject}_desc-brain_mask.nii.gz``; any
  non-zero voxel is brain, so a skull-stripped image can serve as its own mask.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("mrisr")

LOCAL_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
BIDS_T1W = re.compile(r"(?P<subject>sub-[A-Za-z0-9]+)(?:_[A-Za-z]+-[A-Za-z0-9]+)*_T1w\.nii(?:\.gz)?")
PLACEHOLDER = "{subject}"


@dataclass(frozen=True)
class LocalScan:
    t1: str
    mask: str | None = None


def validate_local_subject(subject: str, path: str | os.PathLike = "") -> str:
    """A subject ID that is safe as a folder name, or ``ValueError`` naming the path it came from."""
    if not isinstance(subject, str) or not LOCAL_SUBJECT.fullmatch(subject):
        source = f" (from {path})" if path else ""
        raise ValueError(
            f"{subject!r}{source} is not a usable subject ID: IDs are 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return subject


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob pattern with {subject}: the first placeholder captures, later ones repeat it."""
    if "**" in pattern:
        raise ValueError(f"{pattern}: '**' is not supported; use one '*' per folder level")
    parts, captured = [], False
    for token in re.split(r"(\{subject\}|\*|\?)", pattern):
        if token == PLACEHOLDER:
            parts.append("(?P=subject)" if captured else "(?P<subject>[^/]+)")
            captured = True
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        elif token:
            if any(c in token for c in "[]{}"):
                raise ValueError(f"{pattern}: only '*', '?' and {PLACEHOLDER} are supported as placeholders")
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def find_by_pattern(pattern: str) -> dict[str, str]:
    """{subject: file} for the files matching ``pattern`` (see the module docstring)."""
    pattern = os.path.abspath(os.path.expanduser(pattern))
    if PLACEHOLDER not in pattern:
        raise ValueError(f"local.t1 pattern {pattern} has no {PLACEHOLDER} placeholder")
    regex = _pattern_regex(pattern)
    found: dict[str, str] = {}
    for path in sorted(glob.glob(pattern.replace(PLACEHOLDER, "*"))):
        match = regex.fullmatch(path)
        if match is None or not os.path.isfile(path):
            continue  # e.g. a repeated {subject} with two different values
        subject = validate_local_subject(match["subject"], path)
        if subject in found:
            raise ValueError(f"subject {subject} matches two files, {found[subject]} and {path}: make the pattern specific")
        found[subject] = path
    return found


def find_bids(root: str | os.PathLike, sessions: bool = False) -> dict[str, str]:
    """{sub-<label>: T1w file} of a BIDS dataset (see the module docstring).

    With ``sessions`` every session is a scan of its own: {sub-<label>_ses-<label>:
    T1w file} (``sub-<label>`` for a subject without sessions), the first T1w of
    each session in sorted path order (apply mode).
    """
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not root.is_dir():
        raise ValueError(f"local.bids_root {root}: no such folder")
    candidates: dict[str, list[Path]] = {}
    for path in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*")):
        folders = path.relative_to(root).parts[:-2]
        match = BIDS_T1W.fullmatch(path.name)
        if match is None or match["subject"] != folders[0] or not path.is_file():
            continue  # not a BIDS T1w file name, or one filed under another subject
        key = folders[0]
        if sessions and len(folders) == 2:
            if f"_{folders[1]}_" not in path.name:
                continue  # a file filed under another session
            key = f"{folders[0]}_{folders[1]}"
        candidates.setdefault(validate_local_subject(key, path), []).append(path)
    found = {}
    for key, paths in sorted(candidates.items()):
        paths = sorted(paths)
        if len(paths) > 1:
            log.info("%s has %d T1w scans; using %s", key, len(paths), paths[0].relative_to(root))
        found[key] = str(paths[0])
    return found


def mask_for(pattern: str, subject: str) -> str:
    """The mask file of ``subject`` named by ``pattern`` (``{subject}`` substituted, globs allowed)."""
    path = os.path.abspath(os.path.expanduser(pattern.replace(PLACEHOLDER, subject)))
    if any(c in path for c in "*?"):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if len(matches) != 1:
            raise ValueError(f"local.mask: {len(matches)} files match {path} for {subject}; need exactly one")
        return matches[0]
    if not os.path.isfile(path):
        raise ValueError(f"local.mask: no mask for {subject}: {path} does not exist")
    return path


def find_scans(section: Mapping[str, Any], sessions: bool = False) -> dict[str, LocalScan]:
    """{subject: LocalScan} of the ``local`` config section (exactly one of ``t1`` or ``bids_root``); with
    ``sessions``, a BIDS dataset's sessions are scans of their own (``find_bids``)."""
    t1_pattern, bids_root, mask_pattern = section.get("t1"), section.get("bids_root"), section.get("mask")
    if bool(t1_pattern) == bool(bids_root):
        raise ValueError("source: local needs exactly one of local.t1 (a pattern with {subject}) or local.bids_root")
    if mask_pattern and PLACEHOLDER not in mask_pattern:
        raise ValueError(f"local.mask pattern {mask_pattern} has no {PLACEHOLDER} placeholder")
    t1_files = find_by_pattern(t1_pattern) if t1_pattern else find_bids(bids_root, sessions)
    if not t1_files:
        raise ValueError(f"source: local found no T1w files ({t1_pattern or bids_root})")
    return {
        subject: LocalScan(t1=path, mask=mask_for(mask_pattern, subject) if mask_pattern else None)
        for subject, path in sorted(t1_files.items())
    }
