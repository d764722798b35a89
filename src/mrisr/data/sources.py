"""Where subjects come from: one place that knows the data sources (``config["source"]``).

The workflow plans its jobs with these functions (``workflow/rules/common.smk``)
and ``fetch_subject`` fetches one subject from the same config.

| source | subjects | ships a brain mask |
|---|---|---|
| ``demo`` | demo01 ... (``demo.n_subjects``) | yes (the template's) |
| ``hcp`` | ``hcp.subjects`` and/or ``hcp.subjects_file`` (six-digit IDs) | yes (``brainmask_fs``) |
| ``openneuro`` | ``openneuro.subjects`` and/or ``openneuro.subjects_file`` (``sub-<label>``) | no |
| ``local`` | from the paths (``local.t1`` pattern or ``local.bids_root``) | if ``local.mask`` is set |
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrisr.data import cohort, hcp, local, openneuro
from mrisr.data.demo import demo_subject_ids, demo_subject_index, make_demo_subject
from mrisr.io import atomic_path, load_volume, save_volume

log = logging.getLogger("mrisr")

SOURCES: tuple[str, ...] = ("demo", "hcp", "openneuro", "local")
# The grammar of each source's subject IDs, for the workflow's wildcard
# constraint. Listing the IDs themselves ("100307|100408|...") makes Snakemake
# rescan an 8 kB pattern for every file of every job, 2-6 s of a 10-18 s dry
# run over the 1,113 HCP subjects (docs/benchmarks.md, "DAG scale").
SUBJECT_ID_PATTERNS: dict[str, str] = {
    "demo": r"demo[0-9]+",
    "hcp": hcp.HCP_SUBJECT.pattern,
    "openneuro": openneuro.SUBJECT.pattern,
    "local": local.LOCAL_SUBJECT.pattern,
}


def _source(config: Mapping[str, Any]) -> str:
    source = config.get("source", "demo")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    return source


def subject_ids(config: Mapping[str, Any]) -> list[str]:
    """The subject IDs of the configured source, validated."""
    source = _source(config)
    if source == "demo":
        n, anatomy = config["demo"]["n_subjects"], config["demo"].get("anatomy", "real")
        if anatomy == "real" and n > cohort.n_brains():
            raise ValueError(f"demo.n_subjects: {n}, but the real demo anatomy ships {cohort.n_brains()} brains "
                             "(use at most that many, or demo.anatomy: template)")
        return demo_subject_ids(n)
    if source == "hcp":
        return hcp.read_subjects(config["hcp"].get("subjects") or (), config["hcp"].get("subjects_file"))
    if source == "openneuro":
        openneuro.OpenNeuroSettings.from_config(config["openneuro"])  # the accession, checked before any job
        section = config["openneuro"]
        return openneuro.read_subjects(section.get("subjects") or (), section.get("subjects_file"))
    return list(local.find_scans(config["local"]))


def subject_id_pattern(config: Mapping[str, Any]) -> str:
    """A regex every subject ID of the source matches (and no path with a '/' or '.')."""
    return SUBJECT_ID_PATTERNS[_source(config)]


def ships_mask(config: Mapping[str, Any]) -> bool:
    """Whether the source provides a brain mask (otherwise skullstrip estimates one)."""
    source = _source(config)
    return source in ("demo", "hcp") or (source == "local" and bool(config["local"].get("mask")))


def local_scans(config: Mapping[str, Any], sessions: bool = False) -> dict[str, local.LocalScan]:
    """{subject: LocalScan} when the source is local, else empty; with ``sessions`` (apply mode) every
    session of a BIDS dataset is a scan of its own, keyed ``sub-<label>_ses-<label>``."""
    return local.find_scans(config["local"], sessions) if _source(config) == "local" else {}


def source_dataset(config: Mapping[str, Any]) -> dict[str, str]:
    """The source as a BIDS ``SourceDatasets`` entry (where the scans were read from)."""
    source = _source(config)
    if source == "demo":
        if config["demo"].get("anatomy", "real") == "real":
            return {"Name": f"mrisr demo cohort: real brains of {cohort.DATASET['name']}, licence "
                            f"{cohort.DATASET['license']}, in synthetic heads",
                    "DOI": f"doi:{cohort.DATASET['doi']}"}
        return {"Name": "mrisr demo cohort (synthetic subjects made from the MNI152 2009c template in nilearn)"}
    if source == "hcp":
        return {"Name": "HCP-1200 (WU-Minn Human Connectome Project)",
                "URL": f"s3://{config['hcp']['bucket']}/{config['hcp']['prefix']}"}
    if source == "openneuro":
        section = config["openneuro"]
        return {"Name": f"OpenNeuro {section['accession']}", "URL": f"s3://{section['bucket']}/{section['accession']}"}
    section = config["local"]
    where = section.get("bids_root") or section.get("t1")
    return {"URL": Path(os.path.abspath(os.path.expanduser(where))).as_uri()}


def source_uri(config: Mapping[str, Any], subject: str, scan: local.LocalScan | None = None) -> str:
    """Where one subject's T1 came from, for a derivative's ``Sources``: a ``bids:raw:`` URI into a BIDS
    source (``raw`` is the source's name in ``DatasetLinks``), else the file's or object's URI."""
    source = _source(config)
    if source == "demo":
        demo = config["demo"]
        return (f"mrisr:demo/{subject}?anatomy={demo.get('anatomy', 'real')}&seed={demo['seed']}"
                f"&voxel_size_mm={demo['voxel_size_mm']}")
    if source == "hcp":
        return f"s3://{config['hcp']['bucket']}/{config['hcp']['prefix']}/{subject}/{hcp.HCP_FILES['t1']}"
    if source == "openneuro":  # the subject's folder: which T1w in it is found when it is fetched
        section = config["openneuro"]
        return f"s3://{section['bucket']}/{section['accession']}/{subject}/"
    if scan is None:
        raise ValueError(f"{subject}: source local needs the subject's T1 file")
    root = config["local"].get("bids_root")
    if root:
        relative = Path(scan.t1).relative_to(Path(os.path.abspath(os.path.expanduser(root))))
        return f"bids:raw:{relative.as_posix()}"
    return Path(scan.t1).as_uri()


def data_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config values a fetched file's content depends on (not how it is transferred).

    The fetch rule takes these as params, so changing them re-fetches, while
    changing retries, timeouts, credentials or a mirror's address does not.
    Local files are the rule's inputs instead.
    """
    source = _source(config)
    if source == "demo":
        return {"anatomy": config["demo"].get("anatomy", "real"), "seed": config["demo"]["seed"],
                "voxel_size_mm": config["demo"]["voxel_size_mm"]}
    if source == "hcp":
        return {"bucket": config["hcp"]["bucket"], "prefix": config["hcp"]["prefix"]}
    if source == "openneuro":
        return {k: config["openneuro"][k] for k in ("bucket", "accession", "session")}
    return {}


def fetch_subject(
    subject: str, config: Mapping[str, Any], out_t1: str, out_mask: str | None = None,
    scan: local.LocalScan | None = None,
) -> None:
    """Fetch one subject's raw T1 (and the source's brain mask, if ``out_mask``) from the configured source.

    ``scan`` is a local subject's files (source local).
    """
    source = _source(config)
    if source == "demo":
        settings = config["demo"]
        fetch_demo(subject, settings["seed"], settings["voxel_size_mm"], out_t1, out_mask,
                   settings.get("anatomy", "real"))
    elif source == "hcp":
        outputs = {"t1": out_t1} | ({"mask": out_mask} if out_mask else {})
        hcp.fetch_subject(subject, hcp.S3Settings.from_config(config["hcp"]), outputs)
    elif source == "openneuro":
        if out_mask:
            raise ValueError(f"{subject}: source openneuro ships no brain mask; skullstrip estimates one")
        openneuro.fetch_subject(subject, openneuro.OpenNeuroSettings.from_config(config["openneuro"]), out_t1)
    else:
        if scan is None:
            raise ValueError(f"{subject}: source local needs the subject's T1 file")
        copy_volume(scan.t1, out_t1)
        if out_mask:
            if scan.mask is None:
                raise ValueError(f"{subject}: a mask output was asked for but the subject has no mask file")
            copy_volume(scan.mask, out_mask)
        log.info("%s: %s -> %s%s", subject, scan.t1, out_t1, f", mask {scan.mask}" if out_mask else "")


def fetch_demo(subject: str, seed: int, voxel_size_mm: float, out_t1: str, out_mask: str | None,
               anatomy: str = "real") -> None:
    """Synthesise one demo subject (``data.demo``) as raw T1 and brain mask NIfTIs."""
    sub = make_demo_subject(demo_subject_index(subject), seed=seed, voxel_size_mm=voxel_size_mm, anatomy=anatomy)
    if out_mask:
        save_volume(out_mask, sub.mask, sub.affine, dtype=np.uint8)
    save_volume(out_t1, sub.t1, sub.affine)
    log.info("%s: demo subject %s (%s anatomy), shape %s, %.1f mm", subject, out_t1, anatomy, sub.t1.shape,
             voxel_size_mm)


def copy_volume(src: str, dest: str) -> None:
    """Copy a 3D NIfTI to ``dest`` (.nii.gz) atomically; the source is only read.

    A .nii.gz file is copied byte for byte; a .nii file is rewritten
    compressed with its header kept. Either way the volume is checked first.
    """
    import nibabel as nib

    load_volume(src)  # a clear error naming the file if it is not a usable 3D NIfTI
    with atomic_path(dest) as tmp:
        if str(src).endswith(".nii.gz"):
            shutil.copyfile(src, tmp)
        else:
            nib.save(nib.load(src), str(tmp))
