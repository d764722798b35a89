"""NIfTI input/output, affine bookkeeping and intensity normalisation.

Every volume the package writes goes through ``save_volume``, which writes to
a temporary file beside the target and renames it, so an interrupted job never
leaves a file that looks complete. Every volume it reads goes through
``load_volume``, which turns the ways a file can be wrong into one-line
errors that name the file.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np


class InputError(ValueError):
    """Input that cannot be used (a scan, a mask, a checkpoint): the message names the file and the problem,
    and is all a user needs to see (the workflow's jobs log it as one line, ``mrisr: error: ...``)."""


class VolumeError(InputError):
    """A NIfTI file that cannot be used; the message names the file and the problem."""


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI as (float32 array, 4x4 float64 affine).

    A 4D file with a single volume is squeezed to 3D; anything else that is not
    3D, a file that cannot be read, and non-finite voxels raise ``VolumeError``.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise VolumeError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise VolumeError(f"{path}: {bad} voxels are NaN or infinite")
    return data, np.asarray(img.affine, dtype=np.float64)


def check_same_grid(
    data: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
    reference: np.ndarray, reference_affine: np.ndarray, reference_path: str | os.PathLike,
) -> None:
    """Raise ``VolumeError`` unless ``path``'s volume lies on the grid of ``reference_path``'s
    (same shape, affines equal within 1e-3 mm): a mask, or an estimate scored against its HR."""
    if data.shape != reference.shape or not np.allclose(affine, reference_affine, atol=1e-3):
        raise VolumeError(f"{path}: grid {data.shape} does not match the grid {reference.shape} of {reference_path}")


def check_contrast(data: np.ndarray, path: str | os.PathLike) -> None:
    """Raise ``VolumeError`` for an image with nothing in it: all zeros, or one constant value."""
    if not np.any(data):
        raise VolumeError(f"{path}: the volume is empty (every voxel is 0)")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise VolumeError(f"{path}: the volume is constant (every voxel is {lo:g})")


def check_voxel_size(
    affine: np.ndarray, expected_mm: np.ndarray | float, path: str | os.PathLike, tolerance: float = 0.25
) -> str | None:
    """A warning (or None) when voxel sizes differ from ``expected_mm`` by more than ``tolerance`` (relative)."""
    actual = voxel_sizes(affine)
    expected = np.broadcast_to(np.asarray(expected_mm, dtype=float), (3,))
    if np.any(np.abs(actual / expected - 1.0) > tolerance):
        return (
            f"{path}: voxel size {np.round(actual, 2).tolist()} mm differs from the "
            f"{np.round(expected, 2).tolist()} mm the model was trained on; results may be poor"
        )
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps ``path``'s suffixes (nibabel picks compression
    from them) and starts with a dot so it never matches a workflow pattern.
    The file gets the permissions a plain ``open`` would give it (0666 less
    the umask), not ``mkstemp``'s owner-only 0600: a report or volume is
    meant to be read by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    # A writer killed outright (SIGKILL, node failure) cannot remove its
    # temporary file; the next writer of the same output does.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tsv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a tab-separated table with a header row, atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    dtype: type = np.float32,
    xform_code: int = 1,
) -> None:
    """Write a 3D array as NIfTI-1 with ``affine`` as both sform and qform, atomically."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D array, got shape {data.shape}")
    img = nib.Nifti1Image(data.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=xform_code)
    img.set_qform(affine, code=xform_code)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel side lengths (mm) of an affine: the norms of its first three columns."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def crop_or_pad(
    volume: np.ndarray, affine: np.ndarray, start: tuple[int, int, int], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Take the box [start, start + shape) from ``volume``, zero-filling outside it.

    ``start`` may be negative and the box may exceed the volume. Returns the
    box and its affine (the old affine translated to voxel ``start``), so the
    box lands where it was in world space.
    """
    out = np.zeros(shape, dtype=volume.dtype)
    src, dst = [], []
    for s, n, size in zip(start, shape, volume.shape):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out, _translate(affine, start)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out, _translate(affine, start)


def _translate(affine: np.ndarray, start: tuple[int, int, int]) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = start
    return np.asarray(affine, dtype=np.float64) @ shift


def normalise_intensity(
    volume: np.ndarray, mask: np.ndarray, percentile: float = 99.5
) -> np.ndarray:
    """Scale so the ``percentile`` of brain intensities is 1, clip to [0, 1], zero outside the mask.

    Clipping to [0, 1] fixes the data range that PSNR and SSIM are computed
    with (``metrics.DATA_RANGE`` = 1).
    """
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("brain mask is empty")
    scale = float(np.percentile(volume[mask], percentile))
    if not scale > 0:
        raise ValueError(f"the {percentile}th percentile of brain intensities is {scale}, not > 0")
    out = np.clip(volume / scale, 0.0, 1.0).astype(np.float32)
    out[~mask] = 0.0
    return out


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """An uncompressed, C-ordered ``.npy`` file, written through ``atomic_path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


class NpyArray:
    """A read-only 3D ``.npy`` file whose boxes are read with ``os.pread``, never loaded or memory-mapped.

    A box costs one read per index of its first axis, each of a contiguous
    run of whole rows: the process holds the box, not the volume (a memory
    map would count every page it touched towards the process's resident
    size). Boxes may reach outside the volume: that part reads as zeros. The
    file is opened on first use, so an ``NpyArray`` can be pickled into a
    data-loader worker before it is read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        with open(self.path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
            except ValueError as err:
                raise VolumeError(f"{self.path}: not a .npy file ({err})") from None
            self.offset = fh.tell()
        if fortran or len(shape) != 3 or dtype.hasobject:
            raise VolumeError(f"{self.path}: expected a C-ordered 3D numeric array, found shape {shape} "
                              f"{'(Fortran order) ' if fortran else ''}of {dtype}")
        self.shape, self.dtype = tuple(int(s) for s in shape), dtype
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, box: Sequence[slice]) -> np.ndarray:
        """The array's values in ``box`` (slices with start and stop, step 1), zeros outside the volume."""
        out = np.zeros([b.stop - b.start for b in box], self.dtype)
        inside = [slice(max(b.start, 0), min(b.stop, n)) for b, n in zip(box, self.shape)]
        if any(s.start >= s.stop for s in inside):
            return out
        (x, y, z), (_, ny, nz) = inside, self.shape
        item, rows = self.dtype.itemsize, y.stop - y.start
        for i in range(x.start, x.stop):
            start = self.offset + ((i * ny + y.start) * nz) * item
            raw = os.pread(self._file(), rows * nz * item, start)
            if len(raw) != rows * nz * item:
                raise VolumeError(f"{self.path}: file ends early (truncated .npy)")
            out[i - box[0].start, y.start - box[1].start:y.stop - box[1].start,
                z.start - box[2].start:z.stop - box[2].start] = np.frombuffer(raw, self.dtype).reshape(rows, nz)[:, z]
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
