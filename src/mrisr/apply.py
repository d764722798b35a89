"""A trained cascade applied to a scan as acquired: what ``mrisr super-resolve`` and the workflow's apply mode share.

The scan is brought to the intensity scale the cascade was trained on (its
checkpoint's ``degrade.protocol``: ``data.protocol.normalise_scan``),
super-resolved (``inference.super_resolve``) and written back in the scan's
own units on the grid ``factor`` times finer, whose affine
(``degrade.upsample_affine``) puts it exactly over the scan in world space.
A scan's voxel axes are matched to the cascade's geometry first
(``matching_axis_order``): a thick-slice scan whose thick axis is another
voxel axis than the model's is super-resolved with its axes transposed (no
resampling) and transposed back; one whose shape matches no order (an
isotropic scan for a thick-slice model, or the reverse) is refused, naming
the file and both geometries. A scan whose voxel size is far from the
cascade's training LR gets a warning (``io.check_voxel_size``), and so does
a scan whose brain, once normalised,
sits at another intensity level than the training data's
(``Cascade.intensity_warning``); the caller shows them (stderr, a job's log,
the QC page, the sidecar).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mrisr.config import ConfigError, SamplingOptions, check_combinations
from mrisr.data.degrade import factor_label, grid_factor, upsample_affine
from mrisr.data.protocol import lr_tissue_level, normalise_scan
from mrisr.diffusion.cascade import total_factor
from mrisr.inference import CheckpointError, Stage, load_cascade, super_resolve
from mrisr.io import VolumeError, check_contrast, check_same_grid, check_voxel_size, load_volume, voxel_sizes


INTENSITY_TOLERANCE = 1.25  # a tissue level this many times off the training data's gets a warning


def intensity_level_warning(level: float, trained: float, path: str) -> str | None:
    """A warning (or None) when a scan's tissue level ``level`` is more than ``INTENSITY_TOLERANCE`` times above
    or below the training data's ``trained``."""
    if trained / INTENSITY_TOLERANCE <= level <= trained * INTENSITY_TOLERANCE:
        return None
    return (f"{path}: normalised, its brain's median intensity is {level:.2f}, against {trained:.2f} in the "
            "model's training data; results may be poor (a contrast other than T1w, or a bright structure "
            "inside the brain setting the intensity scale?)")


ANISOTROPY_TOLERANCE = 1.5  # a scan's voxel shape this many times off the model's, along an axis, is refused

IDENTITY = (0, 1, 2)


def _shape_text(voxel_mm: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in voxel_mm)


def matching_axis_order(scan_mm: Sequence[float], factor: Sequence[int], trained_mm: Sequence[float] | None,
                        path: str) -> tuple[int, int, int]:
    """The order of a scan's voxel axes whose voxel shape matches the model's training LR.

    Shapes are voxel sizes over the smallest (1x1x4 for 2x2x8 mm); the
    model's is its training LR's when the checkpoint records it, else its
    factor's (an isotropic HR). The order is the permutation of the scan's
    axes closest to it (the sum of |log| ratios; the identity where it ties,
    so any scan of an isotropic model keeps its axes). ``VolumeError`` naming
    the file and both geometries when even that order is more than
    ``ANISOTROPY_TOLERANCE`` off along an axis: a thick-slice model given an
    isotropic scan, or an isotropic model given thick slices.
    """
    model = np.asarray(trained_mm if trained_mm is not None else factor, dtype=float)
    model, scan = model / model.min(), np.asarray(scan_mm, dtype=float) / min(scan_mm)

    def misfit(order: tuple[int, ...]) -> np.ndarray:
        return np.abs(np.log(scan[list(order)] / model))

    best = min(itertools.permutations(range(3)), key=lambda order: float(misfit(order).sum()))
    if float(misfit(best).max()) > math.log(ANISOTROPY_TOLERANCE):
        trained = f"LR voxels {_shape_text(trained_mm)} mm" if trained_mm is not None else "an isotropic HR"
        raise VolumeError(
            f"{path}: voxels of {_shape_text(scan_mm)} mm (shape {_shape_text(scan)}) match no axis order of "
            f"the model's geometry: it super-resolves x{factor_label(factor)} from {trained} (shape "
            f"{_shape_text(model)}); give it scans of that shape, or a model trained on them "
            "(cascade.factors per axis: docs/thick-slice.md)")
    return best  # type: ignore[return-value]


@dataclass(frozen=True)
class Cascade:
    """Loaded stage checkpoints, coarse to fine, checked against the sampling options they will run with."""

    stages: tuple[Stage, ...]

    @classmethod
    def load(cls, checkpoints: Sequence[str], options: SamplingOptions, device) -> "Cascade":
        """``CheckpointError`` naming the first checkpoint when the sampling options cannot work with its diffusion."""
        stages = load_cascade(checkpoints, device)
        try:
            check_combinations(stages[0].config["diffusion"], options.to_dict())
        except ConfigError as err:
            raise CheckpointError(f"{checkpoints[0]}: {err}") from None
        return cls(tuple(stages))

    @property
    def protocol(self) -> str:
        """How the training data were normalised; checkpoints from before the protocol existed were ``masked``."""
        return str(self.stages[0].config["degrade"].get("protocol", "masked"))

    @property
    def normalisation(self) -> tuple[str, float]:
        """How a scan's intensity scale is read (``skullstrip.normalise``) and its percentile, as the training
        run read them; checkpoints from before these were stored used the field of view's 99.5th percentile."""
        stored = self.stages[0].config.get("skullstrip")
        if stored is None:
            return "field_of_view", 99.5
        return str(stored.get("normalise", "field_of_view")), float(stored.get("percentile", 99.5))

    @property
    def factor(self) -> tuple[int, int, int]:
        """The whole cascade's factor per axis."""
        return total_factor([s.factor for s in self.stages])

    @property
    def lr_voxel_size_mm(self) -> list[float] | None:
        """The voxel size of the first stage's training LR, when the checkpoint records it."""
        trained = self.stages[0].config.get("data", {}).get("lr_voxel_size_mm")
        return None if trained is None else [float(v) for v in trained]

    @property
    def lr_brain_median(self) -> float | None:
        """The training LRs' median tissue level (``protocol.lr_tissue_level``), when the checkpoint records it."""
        trained = self.stages[0].config.get("data", {}).get("lr_brain_median")
        return None if trained is None else float(trained)

    def intensity_warning(self, network_input: np.ndarray, affine: np.ndarray, path: str) -> str | None:
        """A warning (or None) when the normalised scan's tissue level (``protocol.lr_tissue_level``, measured
        as the training LR's was) is more than ``INTENSITY_TOLERANCE`` times above or below the training
        data's: a scan whose brain the network sees at an intensity level it was not trained on. None when
        either is unknown (no brain found on a grid of 6 mm or coarser; a checkpoint that records none)."""
        trained = self.lr_brain_median
        level = None if trained is None else lr_tissue_level(network_input, affine)
        return None if level is None else intensity_level_warning(level, trained, path)

    def axis_order(self, affine: np.ndarray, path: str) -> tuple[int, int, int]:
        """``matching_axis_order`` of a scan with this ``affine``."""
        return matching_axis_order(voxel_sizes(affine), self.factor, self.lr_voxel_size_mm, path)

    def voxel_size_warning(self, affine: np.ndarray, path: str) -> str | None:
        """``io.check_voxel_size`` against the training LR (None when it matches or is not recorded)."""
        trained = self.lr_voxel_size_mm
        return None if trained is None else check_voxel_size(affine, np.asarray(trained), path)


@dataclass(frozen=True)
class Scan:
    """A scan as acquired: its voxels (scanner units), brain mask, affine and the file they came from."""

    data: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    path: str

    @classmethod
    def load(cls, path: str, mask_path: str | None = None, keep_head: bool = True) -> "Scan":
        """The scan, checked (``io.load_volume``, ``io.check_contrast``), and its brain: the voxels of
        ``mask_path`` (on the scan's grid; zero outside it unless ``keep_head``), else its non-zero voxels."""
        data, affine = load_volume(path)
        check_contrast(data, path)
        if not mask_path:
            return cls(data, data > 0, affine, str(path))
        mask, mask_affine = load_volume(mask_path)
        check_same_grid(mask, mask_affine, mask_path, data, affine, path)
        brain = mask > 0
        if not brain.any():
            raise VolumeError(f"{mask_path}: the brain mask is empty")
        return cls(data if keep_head else np.where(brain, data, 0.0).astype(np.float32), brain, affine, str(path))

    def transposed(self, order: Sequence[int]) -> "Scan":
        """The same scan with its voxel axes in ``order`` (``np.transpose``), its affine's columns with them:
        every voxel stays where it is in world space."""
        order = list(order)
        return Scan(np.transpose(self.data, order), np.transpose(self.brain, order), self.affine[:, [*order, 3]],
                    self.path)


@dataclass(frozen=True)
class AppliedScan:
    """The cascade's output in the scan's units on the finer grid, and how it was made."""

    sr: np.ndarray
    sd: np.ndarray | None  # the samples' per-voxel sd, with several samples
    affine: np.ndarray
    factor: tuple[int, int, int]  # per axis of the scan
    scale: float  # the scan was divided by this for the network, and the output multiplied back
    warning: str | None  # the voxel-size warning, if any
    intensity_warning: str | None = None  # the intensity-level warning, if any
    axis_order: tuple[int, int, int] = IDENTITY  # the order of the scan's axes the cascade saw them in

    @property
    def voxel_size_mm(self) -> list[float]:
        return [float(v) for v in voxel_sizes(self.affine)]


def apply_cascade(
    scan: Scan, cascade: Cascade, options: SamplingOptions, percentile: float | None = None,
    normalised: bool = False, log: Callable[[str], None] = print, warn: Callable[[str], None] = print,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> AppliedScan:
    """Super-resolve ``scan`` with ``cascade`` (see the module doc); raises before any sampling on bad input.

    ``percentile`` overrides the training run's (``Cascade.normalisation``);
    ``normalised`` says the scan is already on the model's intensity scale (a
    training run's LR volumes): it is used as it is, and so is the output (scale 1).
    ``warn`` receives the voxel-size warning before sampling starts, ``log``
    the cascade's progress lines, ``progress`` every reverse step.
    """
    order = cascade.axis_order(scan.affine, scan.path)
    seen = scan.transposed(order)  # the scan as the cascade sees it: its thick axis where the model's is
    if order != IDENTITY:
        log(f"{scan.path}: voxel axes taken in the order {list(order)} (transposed, not resampled) to match the "
            "model's thick axis; the output is transposed back")
    if normalised:
        network_input, scale = seen.data.astype(np.float32), 1.0
    else:
        normalise, trained_percentile = cascade.normalisation
        percentile = trained_percentile if percentile is None else percentile
        network_input, scale = normalise_scan(seen.data, seen.brain, seen.affine, percentile, scan.path,
                                              cascade.protocol, normalise)
    warning = cascade.voxel_size_warning(seen.affine, scan.path)
    intensity = cascade.intensity_warning(network_input, seen.affine, scan.path)
    for message in (warning, intensity):
        if message:
            warn(message)
    final = super_resolve(network_input, list(cascade.stages), options, log=log, progress=progress)[-1]
    back = [int(k) for k in np.argsort(order)]  # the scan's axis j is the seen volume's axis back[j]
    seen_factor = grid_factor(seen.data.shape, final.mean.shape)
    factor = tuple(seen_factor[k] for k in back)
    # The masked protocol's HR is the brain alone: nothing outside the scan's brain, whatever the network
    # (whose loss sees the brain only) puts there.
    keep = 1.0 if cascade.protocol == "acquisition" else _on_finer_grid(scan.brain, factor)
    sr, sd = (None if v is None else np.transpose(v, back) for v in (final.mean, final.sd))
    return AppliedScan(
        sr=sr * scale * keep, sd=None if sd is None else sd * scale * keep,
        affine=upsample_affine(scan.affine, factor), factor=factor, scale=scale, warning=warning,  # type: ignore[arg-type]
        intensity_warning=intensity, axis_order=order,
    )


def _on_finer_grid(mask: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """A mask on the grid ``factor`` times finer: each voxel repeated its axis's factor times along it."""
    for axis, f in enumerate(factor):
        mask = np.repeat(mask, f, axis=axis)
    return mask
