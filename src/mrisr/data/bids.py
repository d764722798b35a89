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

``parse_filename``, ``filename_problems`` and ``tree_problems`` check the tree
against the BIDS schema itself, through the specification's own package,
``bidsschematools``: a file's path (folders and name) must match one of the
schema's file rules for derivatives or for any dataset (entities known, in
order, each once, labels alphanumeric; a known suffix and extension; folders
that agree with the entities), and ``dataset_description.json`` must hold the
fields the schema requires of a derivative dataset. The schema's rules do not
say that an image needs a sidecar; this tree always writes one, so that is
checked too. (``bidsschematools.validator.validate_bids`` applies the rules of
raw datasets only, and accepts any file under a folder named ``derivatives``:
docs/benchmarks.md, "BIDS libraries".)
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mrisr.io import atomic_path

BIDS_VERSION = "1.10.0"
DERIVATIVES_NAME = "mrisr"  # the pipeline's folder under derivatives/
LABEL = re.compile(r"[A-Za-z0-9]+")


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


@dataclass(frozen=True)
class SchemaRules:
    """The BIDS schema's file-name rules for a derivative dataset (compiled once) and the fields its
    ``dataset_description.json`` must hold."""

    version: str  # the BIDS version of the schema, e.g. 1.11.2
    paths: tuple[re.Pattern[str], ...]
    required_fields: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def schema_rules() -> SchemaRules:
    """The bundled BIDS schema's rules (``bidsschematools``): the file rules common to every dataset and those
    of derivatives, as regular expressions over a path relative to the dataset's root; the description's
    required fields, and those required of a derivative dataset."""
    import bidsschematools.rules
    import bidsschematools.schema

    schema = bidsschematools.schema.load_schema()
    rules = [*bidsschematools.rules.regexify_filename_rules(schema.rules.files.common, schema, level=2),
             *bidsschematools.rules.regexify_filename_rules(schema.rules.files.deriv, schema, level=2)]
    fields = {**schema.rules.json.dataset.dataset_description.fields,
              **schema.rules.json.dataset.derivative_description.fields}
    required = tuple(name for name, level in fields.items()
                     if (level if isinstance(level, str) else level.get("level")) == "required")
    return SchemaRules(version=schema["bids_version"], paths=tuple(re.compile(r["regex"]) for r in rules),
                       required_fields=required)


def parse_filename(relpath: str) -> dict[str, str]:
    """The entities, suffix and extension of a path relative to a derivative dataset's root, as the BIDS schema
    names them (``{"subject": "01", "description": "sr", "suffix": "T1w", "extension": ".nii.gz", ...}``);
    ``ValueError`` naming the path when no file rule of the schema matches it."""
    rules = schema_rules()
    for pattern in rules.paths:
        match = pattern.match(relpath)
        if match:
            return {k: v for k, v in match.groupdict().items() if v is not None}
    raise ValueError(f"{relpath}: not a BIDS derivative file name and place (no file rule of the BIDS "
                     f"{rules.version} schema matches: an unknown entity or suffix, entities out of order or "
                     "repeated, a label that is not alphanumeric, or folders that disagree with the entities)")


def filename_problems(path: Path, root: Path) -> list[str]:
    """What breaks the naming rules for one file of a derivatives tree (an empty list if nothing)."""
    relpath = path.relative_to(root).as_posix()
    try:
        found = parse_filename(relpath)
    except ValueError as err:
        return [str(err)]
    extension = found.get("extension", "")
    if extension in (".nii", ".nii.gz") and not path.with_name(path.name.removesuffix(extension) + ".json").is_file():
        return [f"{relpath}: no JSON sidecar"]
    return []


def tree_problems(root: str | Path) -> list[str]:
    """Everything under ``root`` that breaks the naming rules, and a missing or incomplete dataset description."""
    root = Path(root)
    problems = []
    description = root / "dataset_description.json"
    if not description.is_file():
        problems.append(f"{description}: missing")
    else:
        values = json.loads(description.read_text(encoding="utf-8"))
        if values.get("DatasetType") != "derivative":
            problems.append(f"{description}: DatasetType is {values.get('DatasetType')!r}, not 'derivative'")
        problems += [f"{description}: no {key} (required by the BIDS schema)"
                     for key in schema_rules().required_fields if key not in values]
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
