"""Training volumes on disk: one stage's condition, target and mask per subject, read a patch at a time.

The workflow's ``cache_stage`` rule makes a stage's training pair of one
subject once (``diffusion.cascade.stage_pair``: the spline-upsampled
condition, the target on the stage's grid, the brain mask) and writes it as
uncompressed ``.npy`` files beside a small ``cache.json``:

    results/cache/stage{k}/{subject}/cond.npy     float32
                                     target.npy   float32
                                     mask.npy     uint8 (1 inside the brain)
                                     cache.json   shape, brain box, digest, LR voxel size
                                     pred.npy     float32, the stage predictor's g(cond), written
                                                  later by the predict rule (``write_prediction``)

Training opens these (``CachedVolume``) and reads patches with ``os.pread``
(``io.NpyArray``): no volume is decompressed or held whole in memory, so a
job's memory does not grow with the cohort and a restarted job's first step
does not wait for the cohort to load. Why ``.npy`` rather than zarr or
compressed NIfTI: a 64^3 patch of a 0.7 mm HCP volume is 64 contiguous reads
of whole rows, read in about a millisecond from the page cache, with
nothing to install; compression would cost a decompression per patch and
save disk that the workflow's NIfTIs already keep (docs/benchmarks.md).

``MemoryVolume`` gives an in-memory ``StagePair`` the same interface, for
tests and callers that already hold their volumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from mrisr.data import skullstrip
from mrisr.diffusion.cascade import StagePair
from mrisr.io import NpyArray, VolumeError, atomic_path, save_npy

CACHE_FORMAT = 1
ARRAYS = ("cond", "target", "mask")
PREDICTION = "pred"  # the predictor's output, beside the arrays once the predict rule has run


class PatchSource(Protocol):
    """A training volume that patches are read from: its shape, brain box, mask lookups and boxes."""

    shape: tuple[int, int, int]
    brain_box: tuple[tuple[int, ...], tuple[int, ...]]  # lowest and one-past-highest brain voxel per axis
    digest: str

    def is_brain(self, index: Sequence[int]) -> bool: ...

    def read(self, name: str, box: Sequence[slice]) -> np.ndarray: ...


def volume_digest(pair: StagePair) -> str:
    """A short hash of a training pair: each array's shape, dtype, float64 sum and every 997th value.

    Cheap for a large volume, and any regenerated volume changes it; a resume
    checkpoint records the digests of its data (``resume.data_fingerprint``).
    """
    digest = hashlib.blake2b(digest_size=16)
    for array in (pair.cond, pair.target, pair.mask, *([] if pair.pred is None else [pair.pred])):
        a = np.ascontiguousarray(array)
        digest.update(repr((a.shape, float(a.sum(dtype=np.float64)))).encode())
        digest.update(a.astype(np.float32).ravel()[::997].tobytes())
    return digest.hexdigest()


def brain_box(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The smallest box holding every brain voxel: (lowest index, highest index + 1) per axis
    (``skullstrip.brain_box`` without margin or rounding)."""
    start, shape = skullstrip.brain_box(mask.astype(bool), np.eye(4), 0.0, 1)
    return tuple(int(s) for s in start), tuple(int(s + n) for s, n in zip(start, shape))


class MemoryVolume:
    """A ``StagePair`` held in memory, read like a cache (``PatchSource``)."""

    def __init__(self, pair: StagePair) -> None:
        self.pair = pair
        self.shape = tuple(int(s) for s in pair.cond.shape)
        self.brain_box = brain_box(pair.mask)
        self.digest = volume_digest(pair)

    def is_brain(self, index: Sequence[int]) -> bool:
        return bool(self.pair.mask[tuple(int(i) for i in index)])

    def read(self, name: str, box: Sequence[slice]) -> np.ndarray:
        array = getattr(self.pair, name)
        if array is None:
            raise ValueError(f"a training pair without its {name!r}: a predict-and-refine diffusion model trains on "
                             "its predictor's output (training.refine.with_predictions adds it)")
        out = np.zeros([b.stop - b.start for b in box], array.dtype)
        inside = tuple(slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(box, array.shape))
        if all(s.start < s.stop for s in inside):
            out[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inside, box))] = array[inside]
        return out


@dataclass(frozen=True)
class CacheInfo:
    """What ``cache.json`` says of a cached volume."""

    shape: tuple[int, int, int]
    brain_box: tuple[tuple[int, ...], tuple[int, ...]]
    digest: str
    lr_voxel_size_mm: tuple[float, ...]
    lr_tissue_level: float | None = None  # the normalised LR's tissue level (``protocol.lr_tissue_level``)


def write_stage_cache(pair: StagePair, directory: str | Path, lr_voxel_size_mm: Sequence[float],
                      lr_tissue_level: float | None = None) -> CacheInfo:
    """Write one subject's stage pair as ``cond.npy``, ``target.npy``, ``mask.npy`` and ``cache.json``.

    Each file is written whole or not at all (``io.atomic_path``); ``cache.json``
    comes last, so a cache with it is complete.
    """
    directory = Path(directory)
    info = CacheInfo(shape=tuple(int(s) for s in pair.cond.shape), brain_box=brain_box(pair.mask),
                     digest=volume_digest(pair), lr_voxel_size_mm=tuple(float(v) for v in lr_voxel_size_mm),
                     lr_tissue_level=None if lr_tissue_level is None else float(lr_tissue_level))
    save_npy(directory / "cond.npy", pair.cond.astype(np.float32))
    save_npy(directory / "target.npy", pair.target.astype(np.float32))
    save_npy(directory / "mask.npy", pair.mask.astype(np.uint8))
    with atomic_path(directory / "cache.json") as tmp:
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, **info.__dict__}, indent=1) + "\n")
    return info


def write_prediction(directory: str | Path, pred: np.ndarray) -> Path:
    """Write the stage predictor's output for a cached subject as ``pred.npy`` (whole or not at all)."""
    info = read_cache_info(directory)
    if tuple(pred.shape) != info.shape:
        raise VolumeError(f"{directory}: a prediction of shape {pred.shape} for a cache of shape {info.shape}")
    path = Path(directory) / f"{PREDICTION}.npy"
    save_npy(path, pred.astype(np.float32))
    return path


def _array_digest(array: NpyArray) -> str:
    """A short hash of an array on disk: its float64 sum and every 997th value (as ``volume_digest``)."""
    values = np.asarray(array.read(tuple(slice(0, n) for n in array.shape)), dtype=np.float32)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((values.shape, float(values.sum(dtype=np.float64)))).encode())
    digest.update(values.ravel()[::997].tobytes())
    return digest.hexdigest()


def read_cache_info(directory: str | Path) -> CacheInfo:
    path = Path(directory) / "cache.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise VolumeError(f"{path}: cannot read the training cache's description ({err})") from None
    if values.get("format") != CACHE_FORMAT:
        raise VolumeError(f"{path}: cache format {values.get('format')!r}, this version reads {CACHE_FORMAT}: "
                          "remove results/cache/ and run the workflow again")
    lo, hi = values["brain_box"]
    return CacheInfo(shape=tuple(values["shape"]), brain_box=(tuple(lo), tuple(hi)), digest=values["digest"],
                     lr_voxel_size_mm=tuple(values["lr_voxel_size_mm"]), lr_tissue_level=values.get("lr_tissue_level"))


class CachedVolume:
    """A stage pair cached on disk by ``write_stage_cache``, read a box at a time (``PatchSource``)."""

    def __init__(self, directory: str | Path, prediction: bool = False) -> None:
        """``prediction``: read the predictor's ``pred.npy`` too (it must be there); the digest then covers it,
        so a resume checkpoint made on another predictor's output does not match."""
        self.directory = Path(directory)
        self.info = read_cache_info(self.directory)
        self.shape, self.brain_box, self.digest = self.info.shape, self.info.brain_box, self.info.digest
        names = ARRAYS + ((PREDICTION,) if prediction else ())
        missing = [n for n in names if not (self.directory / f"{n}.npy").is_file()]
        if missing:
            raise VolumeError(f"{self.directory}: the training cache lacks {', '.join(f'{n}.npy' for n in missing)}"
                              + (" (the predict rule writes pred.npy)" if PREDICTION in missing else ""))
        self.arrays = {name: NpyArray(self.directory / f"{name}.npy") for name in names}
        for name, array in self.arrays.items():
            if array.shape != self.shape:
                raise VolumeError(f"{array.path}: shape {array.shape}, but cache.json says {self.shape}")
        if prediction:
            self.digest = hashlib.blake2b((self.digest + _array_digest(self.arrays[PREDICTION])).encode(),
                                          digest_size=16).hexdigest()

    def is_brain(self, index: Sequence[int]) -> bool:
        return bool(self.arrays["mask"].read(tuple(slice(int(i), int(i) + 1) for i in index))[0, 0, 0])

    def read(self, name: str, box: Sequence[slice]) -> np.ndarray:
        return self.arrays[name].read(box)
