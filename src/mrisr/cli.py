"""The ``mrisr`` command: apply a trained cascade to a scan outside the workflow."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import mrisr


def _super_resolve(args: argparse.Namespace) -> int:
    from mrisr.inference import CheckpointError
    from mrisr.io import VolumeError
    from mrisr.pipeline import super_resolve

    sampling = {
        "method": args.sampler, "steps": args.steps, "eta": args.eta,
        "patch_size": args.patch_size, "overlap": args.overlap, "batch_size": 1,
    }
    out = Path(args.output)
    stages = [str(out.with_name(out.name.replace(".nii", f"_stage{k + 1}.nii"))) for k in range(len(args.model))]
    try:
        super_resolve(args.input, args.model, sampling, args.seed, str(out), stages, device=args.device)
    except (VolumeError, CheckpointError) as err:
        print(f"mrisr: error: {err}", file=sys.stderr)
        return 2
    if len(stages) == 1:  # a single stage's output is the SR volume itself
        Path(stages[0]).unlink()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrisr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mrisr {mrisr.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sr = sub.add_parser(
        "super-resolve",
        help="super-resolve a skull-stripped, normalised NIfTI with trained stage checkpoints",
        description="Super-resolve a skull-stripped T1 NIfTI (intensities normalised to [0, 1] as the "
        "workflow's skullstrip stage does) with one or more stage checkpoints, applied in order.",
    )
    sr.add_argument("input", help="LR NIfTI file")
    sr.add_argument("-o", "--output", required=True, help="SR NIfTI file to write")
    sr.add_argument("--model", nargs="+", required=True, help="stage checkpoints, coarse to fine")
    sr.add_argument("--sampler", choices=("ddim", "ancestral"), default="ddim")
    sr.add_argument("--steps", type=int, default=10, help="reverse steps (default 10)")
    sr.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    sr.add_argument("--patch-size", type=int, default=96)
    sr.add_argument("--overlap", type=float, default=0.25)
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sr.set_defaults(func=_super_resolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
