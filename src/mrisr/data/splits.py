"""Subject-level train/validation/test splits.

Splits are made over subjects, never over patches or slices, so no subject's
anatomy is seen in training and then scored in testing. The split is a pure
function of the subject list and a seed; the workflow uses the same function
to plan its jobs and to write ``splits.tsv``.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable

import numpy as np

from mrisr.io import write_tsv

SPLITS: tuple[str, ...] = ("train", "val", "test")


def split_subjects(
    subjects: Iterable[str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Assign each subject to 'train', 'val' or 'test', seeded and order-independent.

    Validation and test each get ``round(n * fraction)`` subjects, at least one;
    training keeps the rest and must keep at least one.
    """
    unique = sorted(set(subjects))
    n = len(unique)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {frac}")
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} subjects cannot fill train, val ({n_val}) and test ({n_test}); need at least {n_val + n_test + 1}"
        )
    order = np.random.default_rng(seed).permutation(n)
    assignment = {}
    for rank, i in enumerate(order):
        assignment[unique[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return dict(sorted(assignment.items()))


def write_splits(path: str | os.PathLike, assignment: dict[str, str]) -> None:
    """Write ``subject<TAB>split`` rows with a header, atomically."""
    write_tsv(path, ["subject", "split"], sorted(assignment.items()))


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    bad = [r for r in rows if r.get("split") not in SPLITS]
    if bad:
        raise ValueError(f"{path}: unknown split {bad[0].get('split')!r}; allowed: {', '.join(SPLITS)}")
    return {r["subject"]: r["split"] for r in rows}
