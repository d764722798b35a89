"""Random training patches centred on brain voxels, and the loader that feeds them to a training loop.

The patches of a step are a pure function of (seed, step, row): row r of
step s comes from its own generator, ``numpy.random.default_rng([seed, s, r])``.
So any process can make any part of any step's batch: data-loader workers
make whole batches ahead of the loop, DDP workers make only their own rows,
and a resumed run continues with exactly the patches it would have had.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from mrisr.data.degrade import as_factor3
from mrisr.resume import STOP_SIGNALS
from mrisr.training.cache import PatchSource

MAX_TRIES = 10_000  # draws in a volume's brain box before giving up on finding a brain voxel


@dataclass(frozen=True)
class CondAugment:
    """``train.cond_augment``: the largest blur sd (voxels) and noise sd (intensity) put on a training condition.

    Conditioning augmentation of cascaded diffusion models (Ho et al. 2022, sec. 3): a stage after the first
    is trained on conditions made from the HR volume but at inference gets the previous stage's output, which
    is smoother; training on conditions degraded by a random amount in [0, level] covers that gap.
    """

    blur: float = 0.0
    noise: float = 0.0

    @classmethod
    def from_mapping(cls, values: dict | None) -> "CondAugment":
        values = values or {}
        return cls(blur=float(values.get("blur", 0.0)), noise=float(values.get("noise", 0.0)))

    @property
    def active(self) -> bool:
        return self.blur > 0 or self.noise > 0

    def margin(self) -> int:
        """Voxels read beyond a patch's edge so that blurring it equals blurring the volume (4 sd)."""
        return int(np.ceil(4 * self.blur))


@dataclass(frozen=True)
class IntensityAugment:
    """``intensity_augment`` of the ``predictor`` and ``train`` sections: the largest global intensity gain and
    gamma put on a training patch pair.

    Scans differ in their intensity scale (which the normalisation removes only as well as its percentile
    is placed) and in their contrast (which it does not remove). Each patch pair is mapped voxel by voxel by

        f(x) = s * sign(x) |x|^gamma,   log s ~ U(-log scale, log scale),  log gamma ~ U(-log gamma, log gamma),

    the same f on the condition, the predictor's output (a diffusion model's second condition) and the
    target, never on the brain mask; 1 switches a factor off. The gain is label-preserving exactly (every
    degradation here is linear: D(s x) = s D(x)); gamma only approximately, since f(D(x)) and D(f(x))
    differ where the intensity varies inside an LR voxel's footprint (``benchmarks/intensity_shift.py``
    measures how much: its ``aug_mismatch``). Validation patches are never augmented.
    """

    scale: float = 1.0
    gamma: float = 1.0

    @classmethod
    def from_mapping(cls, values: dict | None) -> "IntensityAugment":
        values = values or {}
        return cls(scale=float(values.get("scale", 1.0)), gamma=float(values.get("gamma", 1.0)))

    @property
    def active(self) -> bool:
        return self.scale > 1 or self.gamma > 1

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        """(s, gamma) of one patch pair, each log-uniform in [1/max, max]."""
        gain, gamma = np.exp(rng.uniform(-1.0, 1.0, size=2) * np.log((self.scale, self.gamma)))
        return float(gain), float(gamma)


def intensity_map(x: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """f(x) = gain * sign(x) |x|^gamma (``IntensityAugment``), float32; the identity at (1, 1)."""
    if gamma == 1.0:
        return x if gain == 1.0 else (x * np.float32(gain)).astype(np.float32, copy=False)
    return (np.float32(gain) * np.sign(x) * np.abs(x) ** np.float32(gamma)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Pick:
    """Where one patch comes from: volume ``k``, the voxel at its centre, the axes it is mirrored along,
    its condition's augmentation (blur and noise sd, the noise's seed) and the intensity map of the pair
    (gain and gamma, ``IntensityAugment``)."""

    k: int
    centre: tuple[int, int, int]
    axes: tuple[int, ...]
    blur: float = 0.0
    noise: float = 0.0
    noise_seed: int = 0
    gain: float = 1.0
    gamma: float = 1.0


class PatchSampler:
    """Random cubic patches centred on brain voxels of ``volumes`` (``training.cache.PatchSource``).

    A pick chooses a volume uniformly, then a brain voxel uniformly: voxels are
    drawn in the volume's brain box until one is inside the brain, so no list
    of brain voxels is ever made. The patch is the box of side ``patch_size``
    with that voxel at index ``patch_size // 2``; beyond the volume's edge it
    reads zeros; with ``align`` (one integer, or one per axis) its corner is
    moved down to a multiple of ``align`` (a predictor on the LR grid sees
    each patch in the phase it sees a volume in). With ``flip``, a patch pair is mirrored along a random subset
    of the three axes (the same for condition and target): the degradation
    commutes with mirroring, so this is label-preserving augmentation that
    also lets inference average over mirrored inputs (``sampling.flip_ensemble``).
    ``augment`` degrades the condition (``CondAugment``), ``intensity`` maps the whole pair
    (``IntensityAugment``); each draws from a pick's generator only when active, so the patches
    without it are unchanged.
    """

    def __init__(self, volumes: Sequence[PatchSource], patch_size: int, seed: int, flip: bool = False,
                 augment: CondAugment | None = None, cond_names: Sequence[str] = ("cond",),
                 align: int | Sequence[int] = 1, intensity: IntensityAugment | None = None) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.align = as_factor3(align)  # patch corners on multiples of this: a predictor's LR grid keeps its phase
        self.volumes, self.patch_size, self.seed, self.flip = list(volumes), patch_size, int(seed), flip
        self.augment = augment if augment is not None and augment.active else None
        self.intensity = intensity if intensity is not None and intensity.active else None
        self.cond_names = tuple(cond_names)  # the condition's channels: the spline, then g's output if read

    def pick(self, step: int, row: int) -> Pick:
        """The patch of ``row`` in the batch of ``step``."""
        rng = np.random.default_rng([self.seed, step, row])
        k = int(rng.integers(len(self.volumes)))
        volume = self.volumes[k]
        lo, hi = volume.brain_box
        for _ in range(MAX_TRIES):
            centre = tuple(int(v) for v in rng.integers(lo, hi))
            if volume.is_brain(centre):
                break
        else:
            raise ValueError(f"training volume {k}: no brain voxel found in {MAX_TRIES} draws in its brain box")
        if max(self.align) > 1:  # move the patch so that its corner lies on the LR grid's phase
            half = self.patch_size // 2
            centre = tuple(int((c - half) // a * a + half) for c, a in zip(centre, self.align))
        axes = tuple(int(a) for a in np.flatnonzero(rng.integers(0, 2, size=3))) if self.flip else ()
        pick = Pick(k, centre, axes)  # no further draws without augmentation: that stream is unchanged
        if self.augment is not None:
            blur, noise = rng.uniform(0.0, 1.0, size=2) * (self.augment.blur, self.augment.noise)
            pick = replace(pick, blur=float(blur), noise=float(noise), noise_seed=int(rng.integers(2**31)))
        if self.intensity is not None:
            gain, gamma = self.intensity.draw(rng)
            pick = replace(pick, gain=gain, gamma=gamma)
        return pick

    def patch(self, pick: Pick) -> tuple[np.ndarray, np.ndarray]:
        """The (condition, target) patch of a pick, (C, P, P, P) and (P, P, P) float32: every channel but the
        brain mask, and the target, mapped by the pick's intensity map; then the condition's first channel
        (the spline-upsampled input) degraded as picked."""
        p, half = self.patch_size, self.patch_size // 2
        volume = self.volumes[pick.k]
        m = self.augment.margin() if self.augment is not None else 0
        box = tuple(slice(c - half - m, c - half + p + m) for c in pick.centre)
        cond = intensity_map(volume.read("cond", box).astype(np.float32), pick.gain, pick.gamma)
        if pick.blur > 0:
            cond = gaussian_filter(cond, pick.blur, mode="nearest")
        inner = tuple(slice(m, m + p) for _ in range(3))
        cond = cond[inner]
        if pick.noise > 0:
            cond = cond + np.random.default_rng(pick.noise_seed).normal(0.0, pick.noise, cond.shape).astype(np.float32)
        box = tuple(slice(c - half, c - half + p) for c in pick.centre)
        extra = [volume.read(name, box).astype(np.float32) for name in self.cond_names[1:]]
        extra = [x if name == "mask" else intensity_map(x, pick.gain, pick.gamma)
                 for name, x in zip(self.cond_names[1:], extra)]
        target = intensity_map(volume.read("target", box).astype(np.float32), pick.gain, pick.gamma)
        return np.flip(np.stack([cond, *extra]), tuple(a + 1 for a in pick.axes)), np.flip(target, pick.axes)

    def batch(self, step: int, rows: range) -> tuple[np.ndarray, np.ndarray]:
        """The ``rows`` of step ``step``'s batch: (cond, target), (len(rows), C, P, P, P) and (len(rows), 1, P, P, P)
        float32."""
        p = self.patch_size
        cond = np.empty((len(rows), len(self.cond_names), p, p, p), np.float32)
        target = np.empty((len(rows), 1, p, p, p), np.float32)
        for b, row in enumerate(rows):
            cond[b], target[b, 0] = self.patch(self.pick(step, row))
        return cond, target


class StepBatches(torch.utils.data.Dataset):
    """Item ``step``: this worker's rows of that step's batch, as two tensors."""

    def __init__(self, sampler: PatchSampler, rows: range) -> None:
        self.sampler, self.rows = sampler, rows

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cond, target = self.sampler.batch(step, self.rows)
        return torch.from_numpy(cond), torch.from_numpy(target)


def _ignore_stop_signals(_: int) -> None:
    """Loader workers leave stop signals to the training process, which saves and stops them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def batch_loader(
    sampler: PatchSampler, rows: range, start: int, stop: int, workers: int, pin_memory: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of steps ``start`` .. ``stop`` - 1 in order, made by ``workers`` processes (0: this one).

    Workers make up to four batches each ahead of the loop; with ``pin_memory``
    the batches come in page-locked memory, for asynchronous copies to the GPU.
    The workers ignore stop signals (the training process saves and stops
    first) and end when the iterator is exhausted or dropped: drop it before
    the process exits (``TrainLoop.close``), since they ignore the SIGTERM
    that ``multiprocessing`` ends leftover workers with.
    """
    loader = torch.utils.data.DataLoader(
        StepBatches(sampler, rows), batch_size=None, sampler=range(start, stop), num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=4 if workers else None, worker_init_fn=_ignore_stop_signals,
    )
    return iter(loader)
