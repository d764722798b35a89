"""The ``mrisr`` command: apply a trained cascade to one scan, outside the workflow.

    mrisr super-resolve IN.nii.gz -o OUT.nii.gz --model results/models/stage1/checkpoint.pt [...]

The scan is brought to the workflow's intensity convention (brain 99.5th
percentile = 1, clipped to [0, 1]) inside its brain: the voxels of ``--mask``
when given, else its non-zero voxels (a skull-stripped scan). The output is
written back in the input's intensity units, on the grid ``factor`` times
finer whose affine puts it exactly over the input in world space.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import mrisr

log = logging.getLogger("mrisr")


class InputError(ValueError):
    """A problem with the command's inputs, reported as one line."""


def _progress(stage: int, n_stages: int, step: int, n_steps: int) -> None:
    end = "\n" if step == n_steps else ""
    print(f"\rstage {stage + 1}/{n_stages}: step {step}/{n_steps}", end=end, file=sys.stderr, flush=True)


def _normalise(data: np.ndarray, brain: np.ndarray, percentile: float, path: str) -> tuple[np.ndarray, float]:
    scale = float(np.percentile(data[brain], percentile))
    if not scale > 0:
        raise InputError(f"{path}: the brain's {percentile}th intensity percentile is {scale:g}, not > 0")
    out = np.clip(data / scale, 0.0, 1.0).astype(np.float32)
    out[~brain] = 0.0
    return out, scale


def super_resolve_scan(args: argparse.Namespace) -> None:
    """Everything ``mrisr super-resolve`` does; raises on bad input before writing anything."""
    from mrisr.data.degrade import upsample_affine
    from mrisr.inference import load_cascade, super_resolve
    from mrisr.io import check_contrast, check_voxel_size, load_volume, save_volume
    from mrisr.training import pick_device

    if args.sd and args.n_samples < 2:
        raise InputError("--sd needs --n-samples of 2 or more")
    if args.start_t is not None and args.estimate == "posterior_mean":
        raise InputError("--start-t needs --estimate sample_mean (the posterior mean is predicted from pure noise)")
    for path in (args.output, args.sd):
        if path and not str(path).endswith((".nii", ".nii.gz")):
            raise InputError(f"{path}: output names must end in .nii or .nii.gz")
    data, affine = load_volume(args.input)
    check_contrast(data, args.input)
    if args.mask:
        mask, mask_affine = load_volume(args.mask)
        if mask.shape != data.shape or not np.allclose(mask_affine, affine, atol=1e-3):
            raise InputError(f"{args.mask}: mask grid {mask.shape} does not match {args.input} {data.shape}")
        brain = mask > 0
        if not brain.any():
            raise InputError(f"{args.mask}: the brain mask is empty")
        data = np.where(brain, data, 0.0)
    else:
        brain = data > 0
    normalised, scale = _normalise(data, brain, args.percentile, args.input)

    device = pick_device(args.device)
    stages = load_cascade(args.model, device)
    trained = stages[0].config.get("data", {}).get("lr_voxel_size_mm")
    if trained is not None:
        warning = check_voxel_size(affine, np.asarray(trained), args.input)
        if warning:
            print(f"mrisr: warning: {warning}", file=sys.stderr)
    sampling = {
        "method": args.sampler, "steps": args.steps, "eta": args.eta,
        "patch_size": args.patch_size, "overlap": args.overlap, "batch_size": 1,
        "start_t": args.start_t, "n_samples": args.n_samples, "data_consistency": args.data_consistency,
        "estimate": args.estimate, "flip_ensemble": args.flip_ensemble, "variance": args.variance,
    }
    outputs = super_resolve(
        normalised, stages, sampling, seed=args.seed, log=log.info,
        progress=None if args.quiet else _progress,
    )
    final = outputs[-1]
    factor = final.mean.shape[0] // data.shape[0]
    out_affine = upsample_affine(affine, factor)
    if args.sd:
        save_volume(args.sd, final.sd * scale, out_affine)
    save_volume(args.output, final.mean * scale, out_affine)
    log.info("%s -> %s: x%d, %s -> %s", args.input, args.output, factor, data.shape, final.mean.shape)


def _super_resolve(args: argparse.Namespace) -> int:
    from mrisr.inference import CheckpointError
    from mrisr.io import VolumeError

    try:
        super_resolve_scan(args)
    except (VolumeError, CheckpointError, InputError) as err:
        print(f"mrisr: error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrisr", description="Diffusion super-resolution of brain MRI.")
    parser.add_argument("--version", action="version", version=f"mrisr {mrisr.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sr = sub.add_parser(
        "super-resolve",
        help="super-resolve one NIfTI scan with trained stage checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sr.add_argument("input", help="the low-resolution T1 NIfTI (skull-stripped, or give --mask)")
    sr.add_argument("-o", "--output", required=True, help="the super-resolved NIfTI to write")
    sr.add_argument("--model", nargs="+", required=True, metavar="CHECKPOINT",
                    help="stage checkpoints, coarse to fine (results/models/stage*/checkpoint.pt)")
    sr.add_argument("--mask", help="brain mask on the input's grid; voxels outside it are removed")
    sr.add_argument("--percentile", type=float, default=99.5,
                    help="brain intensity percentile mapped to 1, as in the workflow (default 99.5)")
    sr.add_argument("--sampler", choices=("ddim", "ancestral"), default="ddim")
    sr.add_argument("--steps", type=int, default=10, help="reverse steps (default 10)")
    sr.add_argument("--eta", type=float, default=0.0, help="DDIM eta, 0 = deterministic (default 0)")
    sr.add_argument("--start-t", type=int, default=None, help="truncate the reverse process at this t (default: T)")
    sr.add_argument("--n-samples", type=int, default=1, help="samples drawn (default 1)")
    sr.add_argument("--estimate", choices=("posterior_mean", "sample_mean"), default="posterior_mean",
                    help="the output: the posterior-mean estimate E[x0 | LR] (x0 prediction from pure noise; "
                         "highest expected PSNR), or the mean of the samples (default posterior_mean)")
    sr.add_argument("--flip-ensemble", action="store_true",
                    help="draw sample k in the k-th of the 8 mirrorings of the input and mirror it back")
    sr.add_argument("--variance", choices=("posterior", "analytic"), default="posterior",
                    help="reverse-step noise: the sampler's own, or plus the x0 prediction's error stored in "
                         "the checkpoint (Analytic-DPM; few steps spread like 1000) (default posterior)")
    sr.add_argument("--sd", help="also write the samples' per-voxel standard deviation (needs --n-samples >= 2)")
    sr.add_argument("--data-consistency", type=int, default=0, help="back-projection iterations (default 0)")
    sr.add_argument("--patch-size", type=int, default=96, help="inference patch side (default 96)")
    sr.add_argument("--overlap", type=float, default=0.25, help="patch overlap fraction (default 0.25)")
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sr.add_argument("--quiet", action="store_true", help="no progress bar")
    sr.set_defaults(func=_super_resolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
