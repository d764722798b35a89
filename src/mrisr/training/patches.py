"""Random training patches centred on brain voxels."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mrisr.diffusion.cascade import StagePair


class PatchSampler:
    """Random cubic patches centred on brain voxels, drawn with a seeded numpy Generator.

    Volumes are zero-padded by half a patch so centres near the edge are valid.
    ``sample(n)`` returns (cond, target), float32 arrays of shape (n, 1, P, P, P).
    With ``flip``, each patch pair is mirrored along a random subset of the three
    axes (the same for condition and target): the degradation commutes with
    mirroring, so this is label-preserving augmentation that also lets
    inference average over mirrored inputs (``sampling.flip_ensemble``).
    """

    def __init__(
        self, pairs: Sequence[StagePair], patch_size: int, rng: np.random.Generator, flip: bool = False,
    ) -> None:
        if not pairs:
            raise ValueError("no training volumes")
        self.patch_size = patch_size
        self.rng = rng
        self.flip = flip
        half = patch_size // 2
        pad = [(half, patch_size - half)] * 3
        self.cond = [np.pad(p.cond, pad) for p in pairs]
        self.target = [np.pad(p.target, pad) for p in pairs]
        self.centres = [np.argwhere(p.mask) for p in pairs]
        for k, c in enumerate(self.centres):
            if len(c) == 0:
                raise ValueError(f"training volume {k} has an empty brain mask")

    def sample(self, n: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` patch positions; return the patches of ``rows`` of them (all by default).

        The generator advances by ``n`` draws whatever ``rows`` is, so workers
        that each keep their rows of one global batch stay in step.
        """
        p = self.patch_size
        picks = []
        for _ in range(n):
            k = int(self.rng.integers(len(self.centres)))
            centre = self.centres[k][int(self.rng.integers(len(self.centres[k])))]
            axes = tuple(np.flatnonzero(self.rng.integers(0, 2, size=3))) if self.flip else ()
            picks.append((k, centre, axes))
        picks = picks[rows]
        cond = np.empty((len(picks), 1, p, p, p), np.float32)
        target = np.empty((len(picks), 1, p, p, p), np.float32)
        for b, (k, c, axes) in enumerate(picks):
            box = tuple(slice(int(x), int(x) + p) for x in c)  # padded coords: centre - half + half
            cond[b, 0] = np.flip(self.cond[k][box], axes)
            target[b, 0] = np.flip(self.target[k][box], axes)
        return cond, target
