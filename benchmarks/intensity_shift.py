"""A trained demo model on validation brains whose head or brain intensity is shifted beyond its training range.

    .venv/bin/python benchmarks/intensity_shift.py RESULTS [--out benchmarks/results/intensity_shift.tsv]

RESULTS is a finished demo run's ``results/`` folder (``make demo``, or
``benchmarks/config_e2e.sh demo DIR``). For each of its validation subjects
(never a test subject) the raw whole-head T1 the run fetched is changed:

- ``as_is``: unchanged;
- ``head_x2`` / ``head_x0.5``: every voxel outside the brain mask twice / half as bright (the demo's
  head layers vary by up to 2x between subjects; twice the brightest is beyond them);
- ``gain_x3``: the whole volume 3x brighter (a scanner's arbitrary units);
- ``specks``: 2 % of the brain's voxels 3x the brightest (bright vessels or lesions that move the
  brain's 99.5th percentile, and with it the intensity scale);
- ``gamma_G``: the whole head's contrast changed, max * (t1 / max)^G (G = 0.6, 0.8, 1.25, 1.6: grey and
  white matter closer together or further apart than in any training subject);
- ``level_xS``: the normalised LR and HR both S times their level (S = 0.6, 0.8, 1.2), as a normalisation
  whose percentile landed elsewhere would leave them (above 1 the brightest voxels pass the [0, 1] that both
  estimates are clipped to); the warning reads the LR so scaled, as the CLI would read a scan so normalised.

``--models DIR`` scores another run's checkpoints on this run's subjects (e.g. the same recipe trained with
``predictor.intensity_augment``), and ``--out`` names its table. For the ``gamma_G`` variants the table's
``aug_mismatch`` says how far intensity augmentation's stand-in for them is from the real thing: RMS in the
brain of f(c) - c_G, with f(x) = sign(x) |x|^G, c the unshifted scan's condition (its LR spline-upsampled) and
c_G the shifted scan's, over RMS of c_G - HR_G (the spline's own error, what the model corrects).

Each variant goes through the workflow's own skull stripping, LR making and
normalisation (``pipeline.skullstrip``, ``pipeline.make_lr``, with the run's
``skullstrip`` settings) and the run's checkpoints (the predictor's
estimate, ``sampling.estimate: predictor``), and is scored against its own
HR like a test subject (interior PSNR gain over the spline). The
``warning`` column says whether ``mrisr super-resolve`` would warn about its
intensity level: its LR's tissue level (``protocol.lr_tissue_level``)
against the median of the run's training subjects' LR tissue levels, with
``apply.intensity_level_warning``, as a checkpoint of this version records it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr import metrics, pipeline  # noqa: E402
from mrisr.apply import Cascade, intensity_level_warning  # noqa: E402
from mrisr.config import SamplingOptions  # noqa: E402
from mrisr.data.degrade import upsample  # noqa: E402
from mrisr.data.protocol import Acquisition, lr_tissue_level  # noqa: E402
from mrisr.data.splits import read_splits  # noqa: E402
from mrisr.device import pick_device  # noqa: E402
from mrisr.inference import super_resolve  # noqa: E402
from mrisr.io import load_volume, save_volume, write_tsv  # noqa: E402

COLUMNS = ("subject", "variant", "gain_interior", "gain", "psnr_interior", "spline_psnr_interior", "lr_tissue_level",
           "warning", "aug_mismatch")
GAMMAS = (0.6, 0.8, 1.25, 1.6)
LEVELS = (0.6, 0.8, 1.2)


def variants(t1: np.ndarray, mask: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """The shifted versions of one raw whole-head T1 (module doc): {name: (raw volume, level after normalising)}."""
    rng = np.random.default_rng(0)
    brain = np.argwhere(mask)
    specks = t1.copy()
    chosen = brain[rng.choice(len(brain), size=len(brain) // 50, replace=False)]
    specks[tuple(chosen.T)] = 3.0 * t1.max()
    top = float(t1.max())
    raw = {"as_is": t1, "head_x2": np.where(mask, t1, 2.0 * t1), "head_x0.5": np.where(mask, t1, 0.5 * t1),
           "gain_x3": 3.0 * t1, "specks": specks,
           **{f"gamma_{g:g}": top * (np.clip(t1, 0, None) / top) ** g for g in GAMMAS}}
    return {**{name: (volume, 1.0) for name, volume in raw.items()}, **{f"level_x{s:g}": (t1, s) for s in LEVELS}}


def aug_mismatch(work: Path, name: str, factor: int, brain: np.ndarray) -> float:
    """For a ``gamma_G`` variant: RMS(f(c) - c_G) / RMS(c_G - HR_G) in the brain (module doc); else NaN."""
    if not name.startswith("gamma_"):
        return float("nan")
    g = float(name.split("_")[1])
    cond = upsample(load_volume(work / "as_is_lr.nii.gz")[0], factor, 3)
    cond_g = upsample(load_volume(work / f"{name}_lr.nii.gz")[0], factor, 3)
    hr_g = load_volume(work / f"{name}_hr.nii.gz")[0]
    stand_in = np.sign(cond) * np.abs(cond) ** g
    return float(np.sqrt(np.mean((stand_in - cond_g)[brain] ** 2) / np.mean((cond_g - hr_g)[brain] ** 2)))


def score(subject: str, name: str, t1: np.ndarray, level: float, raw_mask: np.ndarray, affine: np.ndarray,
          run: dict, work: Path) -> dict:
    raw, mask_path = work / f"{name}_raw.nii.gz", work / f"{name}_rawmask.nii.gz"
    save_volume(raw, t1, affine)
    save_volume(mask_path, raw_mask, affine, dtype=np.uint8)
    hr, hr_mask, lr = work / f"{name}_hr.nii.gz", work / f"{name}_mask.nii.gz", work / f"{name}_lr.nii.gz"
    strip = run["skullstrip"]
    pipeline.skullstrip(str(raw), str(hr), str(hr_mask), strip["margin_mm"], run["factor"], strip["percentile"],
                        str(mask_path), Acquisition(run["factor"], normalise=strip["normalise"]))
    pipeline.make_lr(str(hr), str(lr), Acquisition(run["factor"], normalise=strip["normalise"]), raw_t1=str(raw),
                     percentile=strip["percentile"])
    target, brain = load_volume(hr)[0] * level, load_volume(hr_mask)[0] > 0
    low, lr_affine = load_volume(lr)
    low = low * level
    out = super_resolve(low, run["cascade"].stages, run["sampling"], log=lambda m: None)[-1].mean
    sr, spline = metrics.scores(target, out, brain), metrics.scores(target, np.clip(upsample(low, run["factor"], 3),
                                                                                   0, 1), brain)
    tissue, trained = lr_tissue_level(low, lr_affine), run["trained_level"]
    warning = tissue is not None and intensity_level_warning(tissue, trained, str(lr)) is not None
    return {"subject": subject, "variant": name, "gain_interior": sr["psnr_interior"] - spline["psnr_interior"],
            "gain": sr["psnr"] - spline["psnr"], "psnr_interior": sr["psnr_interior"],
            "spline_psnr_interior": spline["psnr_interior"],
            "lr_tissue_level": float("nan") if tissue is None else tissue, "warning": "yes" if warning else "no",
            "aug_mismatch": aug_mismatch(work, name, run["factor"], brain)}


def cells(row: dict) -> list[str]:
    """A table row's cells, floats to 4 decimals."""
    return [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--models", type=Path, help="the checkpoints' folder (default: RESULTS/models)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "intensity_shift.tsv")
    args = parser.parse_args()
    models = args.models or args.results / "models"
    checkpoints = sorted(str(p) for p in models.glob("stage*/checkpoint.pt"))
    settings = pipeline.read_sampling_settings(models / pipeline.SAMPLING_SETTINGS)
    sampling = SamplingOptions.from_mapping({**settings, "n_samples": 1, "estimate": "predictor"})
    cascade = Cascade.load(checkpoints, sampling, pick_device("cpu"))
    stage_config = cascade.stages[0].config
    run = {"cascade": cascade, "sampling": sampling, "skullstrip": stage_config["skullstrip"],
           "factor": int(np.prod(stage_config["cascade"]["factors"]))}
    splits = read_splits(args.results / "splits.tsv")
    val = [s for s, part in splits.items() if part == "val"]
    train_levels = [lr_tissue_level(*load_volume(next((args.results / "lr" / s).glob("x*.nii.gz"))))
                    for s, part in splits.items() if part == "train"]
    run["trained_level"] = float(np.median([v for v in train_levels if v is not None]))
    print(f"# training LR tissue level {run['trained_level']:.3f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for subject in val:
            t1, affine = load_volume(args.results / "raw" / subject / "T1w.nii.gz")
            raw_mask = load_volume(args.results / "raw" / subject / "brainmask.nii.gz")[0] > 0
            for name, (volume, level) in variants(t1, raw_mask).items():
                rows.append(score(subject, name, volume, level, raw_mask, affine, run, Path(tmp)))
                print("\t".join(str(rows[-1][c]) for c in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out, COLUMNS, [cells(row) for row in rows])


if __name__ == "__main__":
    main()
