"""BIDS Derivatives: the names, sidecars and ``dataset_description.json`` of apply mode's outputs.

Apply mode writes one super-resolved T1w per scan (subject, or subject and
session) under ``results/derivatives/mrisr/``, as the NiPreps do:

    dataset_description.json
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_desc-sr_T1w.nii.gz   (+ .json)
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_desc-sd_T1w.nii.gz   (several samples; + .json)
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_desc-brain_mask.nii.gz (+ .json)

A ``ScanName`` is one scan's place in that tree; its ``stem``
(``sub-02/ses-1/anat/sub-02_ses-1``) is the workflow's ``{scan}`` wildcard.
Labels are letters and digits only (BIDS); a subject ID of another source
(``100307``, ``demo01``, ``scan_01``) becomes ``sub-`` + its letters and digits.

``filename_problems`` and ``tree_problems`` check names against the BIDS
rules this tree relies on (entities from the specification's table, in its
order, each once, with alphanumeric labels; a known suffix and extension;
folders that agree with the entities; a sidecar beside every image; the
required fields of ``dataset_description.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mrisr.io import atomic_path

BIDS_VERSION = "1.10.0"
DERIVATIVES_NAME = "mrisr"  # the pipeline's folder under derivatives/
# The BIDS specification's entity table (appendix "Entity table"), in the order entities appear in a file name.
ENTITY_ORDER = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir", "run",
    "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording", "chunk", "seg",
    "res", "den", "label", "desc",
)
# The suffixes and extensions this tree holds (anatomical images, masks, their sidecars).
SUFFIXES = ("T1w", "mask")
EXTENSIONS = (".nii.gz", ".nii", ".json")
LABEL = re.compile(r"[A-Za-z0-9]+")
DESCRIPTION_REQUIRED = ("Name", "BIDSVersion", "DatasetType", "GeneratedBy")


@dataclass(frozen=True)
class ScanName:
    """One scan's place in a BIDS tree: its subject label and, if it has one, its session label."""

    subject: str
    session: str | None = None

    def __post_init__(self) -> None:
        for entity, label in (("sub", self.subject), ("ses", self.session)):
            if label is not None and not LABEL.fullmatch(label):
                raise ValueError(f"{entity}-{label}: BIDS labels are letters and digits only")

    @property
    def prefix(self) -> str:
        """The file-name entities: ``sub-01`` or ``sub-01_ses-1``."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> str:
        """``sub-01/anat`` or ``sub-01/ses-1/anat``."""
        return f"sub-{self.subject}/" + (f"ses-{self.session}/" if self.session else "") + "anat"

    @property
    def stem(self) -> str:
        """``folder/prefix``: the workflow's ``{scan}`` wildcard."""
        return f"{self.folder}/{self.prefix}"

    def derivative(self, desc: str, suffix: str, extension: str = ".nii.gz") -> str:
        """A derivative's path relative to the pipeline's folder, e.g. ``sub-01/anat/sub-01_desc-sr_T1w.nii.gz``."""
        return f"{self.stem}_desc-{desc}_{suffix}{extension}"

    @classmethod
    def from_stem(cls, stem: str) -> "ScanName":
        match = STEM.fullmatch(stem)
        if match is None or match["sub2"] != match["sub"] or match["ses2"] != match["ses"]:
            raise ValueError(f"{stem!r} is not a scan stem (sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>])")
        return cls(match["sub"], match["ses"])


STEM = re.compile(r"sub-(?P<sub>[A-Za-z0-9]+)/(?:ses-(?P<ses>[A-Za-z0-9]+)/)?anat/"
                  r"sub-(?P<sub2>[A-Za-z0-9]+)(?:_ses-(?P<ses2>[A-Za-z0-9]+))?")
# The workflow's constraint on {scan}: the stem's grammar.
STEM_PATTERN = r"sub-[A-Za-z0-9]+/(?:ses-[A-Za-z0-9]+/)?anat/sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?"


def scan_name(subject_id: str) -> ScanName:
    """The BIDS name of a source's subject ID: ``sub-01`` / ``sub-01_ses-2`` as they are, others (``100307``,
    ``scan_01``) as ``sub-`` + their letters and digits."""
    bids = re.fullmatch(r"sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?", subject_id)
    if bids:
        return ScanName(bids[1], bids[2])
    label = re.sub(r"[^A-Za-z0-9]", "", subject_id)
    if not label:
        raise ValueError(f"subject {subject_id!r} has no letters or digits to make a BIDS label of")
    return ScanName(label)


def scan_names(subject_ids: Sequence[str]) -> dict[str, str]:
    """{scan stem: subject ID} for a source's IDs; two IDs that would share a BIDS name are an error."""
    out: dict[str, str] = {}
    for subject in subject_ids:
        stem = scan_name(subject).stem
        if stem in out:
            raise ValueError(f"subjects {out[stem]!r} and {subject!r} both become {stem} in BIDS (labels keep "
                             "only letters and digits): rename one")
        out[stem] = subject
    return out


def parse_filename(name: str) -> tuple[list[tuple[str, str]], str, str]:
    """(entities in order, suffix, extension) of a BIDS file name; ``ValueError`` naming what breaks the rules."""
    extension = next((e for e in sorted(EXTENSIONS, key=len, reverse=True) if name.endswith(e)), None)
    if extension is None:
        raise ValueError(f"{name}: extension not one of {', '.join(EXTENSIONS)}")
    *pairs, suffix = name[: -len(extension)].split("_")
    if suffix not in SUFFIXES:
        raise ValueError(f"{name}: suffix {suffix!r} not one of {', '.join(SUFFIXES)}")
    entities = []
    for pair in pairs:
        key, dash, label = pair.partition("-")
        if not dash or key not in ENTITY_ORDER or not LABEL.fullmatch(label):
            raise ValueError(f"{name}: {pair!r} is not a BIDS entity (key-label, alphanumeric label)")
        entities.append((key, label))
    keys = [k for k, _ in entities]
    if not keys or keys[0] != "sub":
        raise ValueError(f"{name}: does not start with sub-<label>")
    if len(set(keys)) != len(keys) or keys != sorted(keys, key=ENTITY_ORDER.index):
        raise ValueError(f"{name}: entities {keys} are repeated or not in the specification's order")
    return entities, suffix, extension


def filename_problems(path: Path, root: Path) -> list[str]:
    """What breaks the naming rules for one file of a derivatives tree (an empty list if nothing)."""
    parts = path.relative_to(root).parts
    try:
        entities, _, extension = parse_filename(parts[-1])
    except ValueError as err:
        return [str(err)]
    found = dict(entities)
    folders = [f"sub-{found['sub']}"] + ([f"ses-{found['ses']}"] if "ses" in found else []) + ["anat"]
    problems = []
    if list(parts[:-1]) != folders:
        problems.append(f"{'/'.join(parts)}: expected under {'/'.join(folders)}/")
    if extension != ".json" and not path.with_name(parts[-1].removesuffix(extension) + ".json").is_file():
        problems.append(f"{'/'.join(parts)}: no JSON sidecar")
    return problems


def tree_problems(root: str | Path) -> list[str]:
    """Everything under ``root`` that breaks the naming rules, and a missing or incomplete dataset description."""
    root = Path(root)
    problems = []
    description = root / "dataset_description.json"
    if not description.is_file():
        problems.append(f"{description}: missing")
    else:
        values = json.loads(description.read_text(encoding="utf-8"))
        problems += [f"{description}: no {key}" for key in DESCRIPTION_REQUIRED if key not in values]
        if values.get("DatasetType") != "derivative":
            problems.append(f"{description}: DatasetType is {values.get('DatasetType')!r}, not 'derivative'")
        if not all(isinstance(g, Mapping) and g.get("Name") for g in values.get("GeneratedBy", [])):
            problems.append(f"{description}: every GeneratedBy entry needs a Name")
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path != description:
            problems += filename_problems(path, root)
    return problems


def dataset_description(version: str, commit: str, sources: Sequence[Mapping[str, Any]],
                        links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The derivatives' ``dataset_description.json`` (BIDS Derivatives: ``DatasetType``, ``GeneratedBy``,
    ``SourceDatasets``); ``commit`` is the git state of the code that made it, ``links`` the
    ``DatasetLinks`` that the sidecars' ``bids:<name>:`` URIs refer to."""
    return {
        "Name": "mrisr: diffusion super-resolution of T1w scans",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": DERIVATIVES_NAME,
            "Version": version,
            "Description": f"Conditional diffusion super-resolution of each T1w as acquired; git commit {commit}",
        }],
        "SourceDatasets": [dict(s) for s in sources],
        **({"DatasetLinks": dict(links)} if links else {}),
    }


def write_json(path: str | Path, values: Mapping[str, Any]) -> None:
    """A JSON file (sorted keys, indented), written atomically (``io.atomic_path``)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
