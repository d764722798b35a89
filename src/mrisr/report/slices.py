"""Looking at volumes: slice panels with zoomed insets, and animated slice sweeps.

Every volume is first turned to the closest RAS+ orientation with its own
affine (``nibabel.orientations``), so axial, coronal and sagittal mean what
they say for any input, and the LR volume is shown as its own voxels
(nearest-neighbour onto the HR grid). Slices are drawn in neurological
convention: the subject's left on the left, superior (or anterior, in
axial slices) up.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy import ndimage  # noqa: E402

from mrisr.io import voxel_sizes  # noqa: E402
from mrisr.metrics import DATA_RANGE  # noqa: E402
from mrisr.report.figures import to_png  # noqa: E402

# Slicing a RAS+ array: the axis held fixed, and the name of the view.
ORIENTATIONS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
ZOOM_COLOUR = "#ffd400"


@dataclass(frozen=True)
class Volumes:
    """Volumes of one subject on the HR grid in RAS+ orientation.

    ``images`` maps a column title to a volume (LR already nearest-upsampled),
    ``errors`` maps a method to |method − HR| inside the brain mask (the
    estimate clipped to [0, DATA_RANGE] first, as the metrics do), ``spacing``
    is the voxel size (mm) along each RAS axis.
    """

    images: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    mask: np.ndarray
    spacing: np.ndarray
    lr_factor: str  # how much finer HR is than LR: ``2``, or per (RAS) axis ``1x1x4``
    # How the colour-mapped columns are titled ({} is the key of ``errors``) and their colour bar labelled:
    # error maps here; apply mode's QC page shows the samples' sd instead (``report.apply``).
    map_title: str = "|{} − HR|"
    map_label: str = "|error| inside the brain mask"

    @property
    def reference(self) -> np.ndarray:
        """The image whose edges place the zoomed window: HR where there is one, else the last image (SR)."""
        return self.images["HR"] if "HR" in self.images else list(self.images.values())[-1]


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array reoriented to the closest RAS+ axes, and its voxel sizes in that order."""
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(volume, ornt)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = voxel_sizes(affine)
    return np.ascontiguousarray(out), spacing


def nearest_to_grid(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a coarse volume onto a finer grid of ``shape`` covering the same box."""
    factors = [n / m for n, m in zip(shape, volume.shape)]
    if all(float(f).is_integer() for f in factors):
        out = volume
        for axis, f in enumerate(factors):
            out = np.repeat(out, int(f), axis=axis)
        return out
    return ndimage.zoom(volume, factors, order=0, grid_mode=True, mode="nearest")


def prepare_volumes(
    lr: tuple[np.ndarray, np.ndarray],
    estimates: Mapping[str, tuple[np.ndarray, np.ndarray]],
    hr: tuple[np.ndarray, np.ndarray],
    mask: tuple[np.ndarray, np.ndarray],
) -> Volumes:
    """Reorient (array, affine) pairs and compute the error maps.

    ``estimates`` are the volumes on the HR grid to compare (e.g. spline, SR),
    in column order; each must have the HR grid's shape after reorientation.
    """
    hr_ras, spacing = to_ras(*hr)
    mask_ras = to_ras(*mask)[0] > 0
    lr_ras = to_ras(*lr)[0]
    if mask_ras.shape != hr_ras.shape:
        raise ValueError(f"mask shape {mask_ras.shape} differs from HR shape {hr_ras.shape}")
    images = {"LR": nearest_to_grid(lr_ras, hr_ras.shape)}
    errors = {}
    for name, pair in estimates.items():
        vol = to_ras(*pair)[0]
        if vol.shape != hr_ras.shape:
            raise ValueError(f"{name}: shape {vol.shape} differs from HR shape {hr_ras.shape}")
        images[name] = vol
        err = np.abs(np.clip(vol, 0.0, DATA_RANGE) - np.clip(hr_ras, 0.0, DATA_RANGE))
        errors[name] = np.where(mask_ras, err, 0.0).astype(np.float32)
    images["HR"] = hr_ras
    return Volumes(images, errors, mask_ras, spacing, ratio_label(hr_ras.shape, lr_ras.shape))


def ratio_label(fine_shape: Sequence[int], coarse_shape: Sequence[int]) -> str:
    """How much finer one grid is than another: ``2``, or per axis (``1x1x4``) where the axes differ."""
    ratios = [n / m for n, m in zip(fine_shape, coarse_shape)]
    return "x".join(f"{r:g}" for r in ratios) if len(set(ratios)) > 1 else f"{ratios[0]:g}"


def centre_slices(mask: np.ndarray) -> dict[int, int]:
    """The slice through the brain mask's centre of mass along each axis."""
    com = ndimage.center_of_mass(mask) if mask.any() else [s / 2 for s in mask.shape]
    return {axis: int(round(c)) for axis, c in enumerate(com)}


def take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice as an image (rows = second remaining axis, drawn with origin='lower')."""
    return np.take(volume, index, axis=axis).T


def _aspect(spacing: np.ndarray, axis: int) -> float:
    first, second = [a for a in range(3) if a != axis]
    return float(spacing[second] / spacing[first])


def inset_corner(mask_slice: np.ndarray, size: float) -> tuple[float, float]:
    """Axes-fraction origin of the corner box (of ``size``) that covers the least brain.

    ``mask_slice`` is drawn with origin='lower', so row 0 is at the bottom.
    """
    rows, cols = mask_slice.shape
    h, w = max(1, int(rows * size)), max(1, int(cols * size))
    corners = {
        (0.0, 0.0): mask_slice[:h, :w], (1.0 - size, 0.0): mask_slice[:h, cols - w:],
        (0.0, 1.0 - size): mask_slice[rows - h:, :w], (1.0 - size, 1.0 - size): mask_slice[rows - h:, cols - w:],
    }
    return min(corners, key=lambda k: (corners[k].mean(), k[1] != 0.0, k[0] == 0.0))


def zoom_window(
    hr_slice: np.ndarray, mask_slice: np.ndarray, side: int, avoid: tuple[float, float], size: float
) -> tuple[int, int]:
    """(row, col) of the top-left of the ``side``² window with the most HR edge energy inside the brain.

    Windows that would lie under the inset (corner ``avoid``, ``size`` of the
    axes) are excluded, so the inset never hides what it magnifies.
    """
    rows, cols = hr_slice.shape
    side = min(side, rows, cols)
    energy = np.hypot(*np.gradient(hr_slice.astype(np.float64))) * mask_slice
    total = ndimage.uniform_filter(energy, size=side, mode="constant")
    # uniform_filter centres the window: the window starting at (r, c) has its centre at r + side // 2.
    r0, c0 = np.arange(rows - side + 1) + side // 2, np.arange(cols - side + 1) + side // 2
    score = total[np.ix_(r0, c0)]
    ax0, ay0 = avoid
    col_lo, col_hi = ax0 * cols, (ax0 + size) * cols
    row_lo, row_hi = ay0 * rows, (ay0 + size) * rows
    starts_r = np.arange(rows - side + 1)[:, None]
    starts_c = np.arange(cols - side + 1)[None, :]
    overlaps = (starts_c < col_hi) & (starts_c + side > col_lo) & (starts_r < row_hi) & (starts_r + side > row_lo)
    score = np.where(overlaps, -np.inf, score)
    if not np.isfinite(score).any():
        return (rows - side) // 2, (cols - side) // 2
    r, c = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(r), int(c)


def slice_panel_figure(vols: Volumes, title: str = "", inset_size: float = 0.42, zoom: float = 3.0) -> bytes:
    """Rows axial, coronal, sagittal; columns LR, estimates, HR, then one |error| map per estimate.

    Images share the intensity scale [0, DATA_RANGE]; error maps share one
    scale, the 99.5th percentile of all shown methods' errors inside the
    brain. Each panel has an inset magnifying (``zoom`` times the panel's
    scale) the same window, marked by a yellow box.
    """
    names = list(vols.images)
    err_names = list(vols.errors)
    pooled = np.concatenate([e[vols.mask] for e in vols.errors.values()]) if vols.errors else np.zeros(1)
    err_max = float(np.percentile(pooled, 99.5)) or 1e-6
    ncols = len(names) + len(err_names)
    centre = centre_slices(vols.mask)
    shapes = [take(vols.mask, axis, centre[axis]).shape for _, axis in ORIENTATIONS]
    heights = [r / c * _aspect(vols.spacing, axis) for (r, c), (_, axis) in zip(shapes, ORIENTATIONS)]
    col_w = 2.0
    fig_h = col_w * (sum(heights) + 0.07) * 1.1 + 0.9
    fig = plt.figure(figsize=(col_w * ncols + 0.4, fig_h))
    grid = fig.add_gridspec(
        len(ORIENTATIONS) + 1, ncols, height_ratios=[*heights, 0.07], hspace=0.1, wspace=0.04,
        left=0.03, right=0.99, top=1.0 - 0.5 / fig_h, bottom=0.4 / fig_h,
    )
    for row, (view, axis) in enumerate(ORIENTATIONS):
        index = centre[axis]
        mask_slice = take(vols.mask, axis, index)
        corner = inset_corner(mask_slice, inset_size)
        rows, cols = mask_slice.shape
        side = max(4, int(round(min(rows, cols) * inset_size / zoom)))
        r, c = zoom_window(take(vols.reference, axis, index), mask_slice, side, corner, inset_size)
        columns = [(n, vols.images[n], "gray", DATA_RANGE) for n in names]
        columns += [(vols.map_title.format(n), vols.errors[n], "magma", err_max) for n in err_names]
        for col, (name, volume, cmap, vmax) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            image = take(volume, axis, index)
            kw = {"cmap": cmap, "vmin": 0.0, "vmax": vmax, "origin": "lower", "interpolation": "nearest",
                  "aspect": _aspect(vols.spacing, axis)}
            handle = ax.imshow(image, **kw)
            if cmap == "gray":
                grey_handle = handle
            else:
                err_handle = handle
            ins = ax.inset_axes([corner[0], corner[1], inset_size, inset_size])
            ins.imshow(image, **kw)
            ins.set_xlim(c - 0.5, c + side - 0.5)
            ins.set_ylim(r - 0.5, r + side - 0.5)
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), side, side, fill=False, ec=ZOOM_COLOUR, lw=0.9))
            for a in (ax, ins):
                a.set_xticks([])
                a.set_yticks([])
            for spine in ins.spines.values():
                spine.set_edgecolor(ZOOM_COLOUR)
                spine.set_linewidth(1.2)
            if row == 0:
                label = name if name != "LR" else f"LR (×{vols.lr_factor}, nearest)"
                ax.set_title(label, fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{view} {index}", fontsize=10)
    n_img = len(names)
    bars = [(grid[-1, :n_img], grey_handle, f"intensity (data range {DATA_RANGE:g})")]
    if err_names:
        bars.append((grid[-1, n_img:], err_handle, vols.map_label))
    for cell, handle, label in bars:
        holder = fig.add_subplot(cell)
        holder.set_axis_off()
        cax = holder.inset_axes([0.04, 0.0, 0.92, 1.0])
        fig.colorbar(handle, cax=cax, orientation="horizontal", label=label)
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - 0.12 / fig_h, va="top")
    return to_png(fig)


# -- animated sweeps -----------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def sweep_frames(
    vols: Volumes, axis: int, names: Sequence[str], min_px: int = 64, max_frames: int = 60, levels: int = 64
) -> list["Image.Image"]:  # noqa: F821
    """Grey frames sweeping through the brain along ``axis``: the named images side by side, labelled.

    Volumes are drawn at their own resolution (enlarged by an integer factor
    only when a slice is smaller than ``min_px``; the page enlarges them
    further without smoothing), every k-th slice so there are at most
    ``max_frames`` frames, quantised to ``levels`` grey levels: GIF's LZW
    compresses noisy MR slices poorly, and this keeps a sweep to a few hundred kB.
    """
    from PIL import Image, ImageDraw

    view = dict((a, v) for v, a in ORIENTATIONS)[axis]
    inside = np.flatnonzero(vols.mask.any(axis=tuple(a for a in range(3) if a != axis)))
    if inside.size == 0:
        inside = np.arange(vols.mask.shape[axis])
    first, last = int(inside[0]), int(inside[-1])
    step = max(1, -(-(last - first + 1) // max_frames))
    rows, cols = take(vols.mask, axis, 0).shape
    aspect = _aspect(vols.spacing, axis)
    scale = max(1, -(-min_px // int(min(rows * aspect, cols))))
    out_h, out_w = int(round(rows * aspect * scale)), cols * scale
    gap, header = 3, 14
    font = _font(11)
    quantum = 256 // levels
    indices = list(range(first, last + 1, step))
    # Start at the brain's centre (what a still of the GIF shows), sweep up, wrap round from the bottom.
    centre = centre_slices(vols.mask)[axis]
    start = min(range(len(indices)), key=lambda k: abs(indices[k] - centre))
    frames = []
    for index in indices[start:] + indices[:start]:
        canvas = Image.new("L", (len(names) * (out_w + gap) - gap, out_h + header), color=0)
        draw = ImageDraw.Draw(canvas)
        for k, name in enumerate(names):
            image = np.flipud(take(vols.images[name], axis, index))  # origin='lower' -> top row first
            grey = np.clip(image / DATA_RANGE, 0.0, 1.0) * 255.0
            grey = (np.floor(grey / quantum) * quantum + quantum // 2) * (grey > 0)
            tile = Image.fromarray(grey.astype(np.uint8)).resize((out_w, out_h), Image.NEAREST)
            canvas.paste(tile, (k * (out_w + gap), header))
            label = name if name != "LR" else f"LR x{vols.lr_factor}"
            draw.text((k * (out_w + gap) + 2, 1), label, fill=255, font=font)
        draw.text((canvas.width - 2, 1), f"{view} {index}", fill=170, font=font, anchor="ra")
        frames.append(canvas)
    return frames


def sweep_gif(vols: Volumes, axis: int, names: Sequence[str], frame_ms: int = 120) -> bytes:
    """An endlessly looping GIF sweeping through the brain along ``axis`` (``sweep_frames``)."""
    frames = sweep_frames(vols, axis, names)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return buf.getvalue()
