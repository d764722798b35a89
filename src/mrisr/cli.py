"""The ``mrisr`` command: apply a trained cascade to one scan, outside the workflow.

    mrisr super-resolve IN.nii.gz -o OUT.nii.gz --model results/models/stage1/checkpoint.pt [...]

The scan is brought to the intensity convention the cascade was trained with
(its checkpoint's ``degrade.protocol`` and ``skullstrip`` settings,
``data.protocol``): for the acquisition protocol, a whole-head scan as it
is, scaled so the training run's percentile of its own brain (found on the
scan's grid; or of its field of view, for models trained that way) is 1 and
clipped to [0, 1]; for the seed's masked protocol, the brain only (the
voxels of ``--mask`` when given, else the non-zero voxels of a
skull-stripped scan), scaled so the brain's percentile is 1. The output is written back in the input's intensity units,
on the grid ``factor`` times finer whose affine puts it exactly over the
input in world space.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import mrisr
import mrisr.io as io
from mrisr.config import ConfigError, SamplingOptions, section_defaults

log = logging.getLogger("mrisr")


class InputError(io.InputError):
    """A problem with the command's options, reported as one line."""


def _progress(stage: int, n_stages: int, step: int, n_steps: int) -> None:
    end = "\n" if step == n_steps else ""
    print(f"\rstage {stage + 1}/{n_stages}: step {step}/{n_steps}", end=end, file=sys.stderr, flush=True)


# ``mrisr super-resolve`` option -> sampling config key; unset options take the training run's settings
# (``pipeline.run_sampling_settings``), or the schema's defaults where the run's folder has none.
SAMPLING_OPTIONS = {
    "sampler": "method", "steps": "steps", "eta": "eta", "start_t": "start_t", "n_samples": "n_samples",
    "estimate": "estimate", "flip_ensemble": "flip_ensemble", "variance": "variance",
    "data_consistency": "data_consistency", "patch_size": "patch_size", "overlap": "overlap", "seed": "seed",
}


def sampling_options(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> SamplingOptions:
    """The sampling section the command's options give: ``defaults`` (the training run's settings; else the
    schema's), overridden where set."""
    given = {key: getattr(args, option) for option, key in SAMPLING_OPTIONS.items() if getattr(args, option) is not None}
    try:
        return SamplingOptions.from_mapping({**(defaults or {}), **given})
    except ConfigError as err:  # name the command's options, not the config's keys
        message = str(err)
        for option, key in SAMPLING_OPTIONS.items():
            message = re.sub(rf"\bsampling\.{key}\b", "--" + option.replace("_", "-"), message)
        raise InputError(message) from None


def super_resolve_scan(args: argparse.Namespace) -> None:
    """Everything ``mrisr super-resolve`` does; raises on bad input before writing anything."""
    from mrisr.apply import Cascade, Scan, apply_cascade
    from mrisr.data.degrade import factor_label
    from mrisr.device import pick_device
    from mrisr.io import save_volume
    from mrisr.pipeline import SAMPLING_SETTINGS, check_sd_calibration, read_sampling_settings, run_sampling_settings

    settings = run_sampling_settings(args.model)
    if settings is None:
        log.info("no %s beside %s: sampling with the schema's defaults and the options given",
                 SAMPLING_SETTINGS, args.model[-1])
    else:
        log.info("sampling as the training run did (%s), where no option says otherwise", settings)
    options = sampling_options(args, None if settings is None else read_sampling_settings(settings))
    if args.sd and options.n_samples < 2:
        raise InputError("--sd needs --n-samples of 2 or more")
    if args.normalised and args.percentile is not None:
        raise InputError("--normalised says the scan needs no rescaling: --percentile has nothing to do with it")
    if args.sd_calibration and not args.sd:
        raise InputError("--sd-calibration calibrates the sd map: give --sd too")
    for path in (args.output, args.sd):
        if path and not str(path).endswith((".nii", ".nii.gz")):
            raise InputError(f"{path}: output names must end in .nii or .nii.gz")
    cascade = Cascade.load(args.model, options, pick_device(args.device))
    fitted = check_sd_calibration(args.sd_calibration, options, args.model) if args.sd_calibration else None
    scan = Scan.load(args.input, args.mask, keep_head=cascade.protocol == "acquisition")
    out = apply_cascade(scan, cascade, options, args.percentile, normalised=args.normalised, log=log.info,
                        warn=lambda w: print(f"mrisr: warning: {w}", file=sys.stderr),
                        progress=None if args.quiet else _progress)
    if args.sd:
        save_volume(args.sd, out.sd if fitted is None else fitted.apply(out.sd), out.affine)
    save_volume(args.output, out.sr, out.affine)
    log.info("%s -> %s: x%s, %s -> %s", args.input, args.output, factor_label(out.factor), scan.data.shape,
             out.sr.shape)


def _super_resolve(args: argparse.Namespace) -> int:
    try:
        super_resolve_scan(args)
    except io.InputError as err:  # scans, masks, checkpoints and options that cannot be used
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
    sr.add_argument("input", help="the low-resolution T1 NIfTI: the whole head for a cascade trained with the "
                                  "acquisition protocol (the default); skull-stripped, or give --mask, for the masked one")
    sr.add_argument("-o", "--output", required=True, help="the super-resolved NIfTI to write")
    sr.add_argument("--model", nargs="+", required=True, metavar="CHECKPOINT",
                    help="stage checkpoints, coarse to fine (results/models/stage*/checkpoint.pt)")
    sr.add_argument("--mask", help="brain mask on the input's grid (masked protocol: voxels outside it are removed; "
                                   "acquisition protocol: not needed)")
    sr.add_argument("--percentile", type=float, default=None,
                    help="intensity percentile mapped to 1 (default: the training run's, stored in the checkpoint)")
    sr.add_argument("--normalised", action="store_true",
                    help="the input is already on the model's intensity scale (a training run's results/lr/*/T1w.nii.gz): "
                         "no rescaling, and the output on that scale too")
    # Sampling options left unset take the training run's settings, the sampling.json the workflow
    # wrote beside the checkpoints' stage folders (results/models/sampling.json), else the schema's.
    d = section_defaults("sampling")
    sr.add_argument("--sampler", choices=("ddim", "ancestral"), help=f"reverse process (default: the run's, else {d['method']})")
    sr.add_argument("--steps", type=int, help=f"reverse steps (default: the run's, else {d['steps']})")
    sr.add_argument("--eta", type=float, help=f"DDIM eta, 0 = deterministic (default: the run's, else {d['eta']})")
    sr.add_argument("--start-t", type=int, help="truncate the reverse process at this t (default: T); "
                                                "needs --estimate sample_mean")
    sr.add_argument("--n-samples", type=int, help=f"samples drawn (default: the run's, else {d['n_samples']})")
    sr.add_argument("--estimate", choices=("posterior_mean", "sample_mean", "predictor"),
                    help="the output: the posterior-mean estimate E[x0 | LR] (x0 prediction from pure noise; "
                         "highest expected PSNR), the mean of the samples, or a predict-and-refine model's "
                         f"predictor alone (default: the run's, else {d['estimate']})")
    sr.add_argument("--flip-ensemble", action="store_true", default=None,
                    help="draw sample k in the k-th of the 8 mirrorings of the input and mirror it back")
    sr.add_argument("--variance", choices=("posterior", "analytic"),
                    help="reverse-step noise: the sampler's own, or plus the x0 prediction's error stored in "
                         f"the checkpoint (Analytic-DPM; few steps spread like 1000) (default: the run's, else {d['variance']})")
    sr.add_argument("--sd", help="also write the samples' per-voxel standard deviation (needs --n-samples >= 2)")
    sr.add_argument("--sd-calibration", metavar="SD_CALIBRATION_JSON",
                    help="calibrate the --sd map as the training run did, with the floor and scale it fitted on its "
                         "validation subjects (results/calibration/sd_calibration.json); refused "
                         "unless the checkpoints and sampling options are the ones it was fitted with")
    sr.add_argument("--data-consistency", type=int,
                    help=f"back-projection iterations (default: the run's, else {d['data_consistency']})")
    sr.add_argument("--patch-size", type=int, help=f"inference patch side (default: the run's, else {d['patch_size']})")
    sr.add_argument("--overlap", type=float, help=f"patch overlap fraction (default: the run's, else {d['overlap']})")
    sr.add_argument("--seed", type=int, help=f"seed of the sampling noise (default: the run's, else {d['seed']})")
    sr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sr.add_argument("--quiet", action="store_true", help="no progress bar")
    sr.set_defaults(func=_super_resolve)
    demo = sub.add_parser(
        "demo-bids", help="write a small BIDS dataset of whole-head demo scans, to try apply mode on",
        description="Whole-head synthetic scans as acquired (mrisr.data.demo, another seed than the demo's "
                    "training cohort), as a BIDS dataset: sub-01, sub-02 (two sessions), ...",
    )
    demo.add_argument("output", help="the folder to write (the dataset's root)")
    demo.add_argument("--subjects", type=int, default=3, help="subjects (default 3; every second has two sessions)")
    demo.add_argument("--voxel-size", type=float, default=4.0,
                      help="isotropic voxel size in mm, 1 to 4 (default 4: the demo model's training LR)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the scans (default 1; the demo trains on 0)")
    demo.add_argument("--thick-slice", type=int, default=1, metavar="F",
                      help="thick-slice scans: slices F times the voxel size thick (a Gaussian slice profile) "
                           "along --slice-axis; e.g. --voxel-size 2 --thick-slice 4 for the thick-slice demo model")
    demo.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2),
                      help="the voxel axis the slices are thick along (default 2: axial slices)")
    demo.set_defaults(func=_demo_bids)
    _add_openneuro_subjects(sub)
    _add_hcp_subjects(sub)
    return parser


def _add_openneuro_subjects(sub: Any) -> None:
    listing = sub.add_parser(
        "openneuro-subjects", help="list the subjects of a public OpenNeuro dataset that have a T1w scan",
        description="Lists s3://openneuro.org/<accession>/ anonymously (no AWS keys) and writes the subjects with "
                    "a T1w scan, one per line, for the config key openneuro.subjects_file.",
    )
    listing.add_argument("accession", help="the dataset, e.g. ds002748")
    listing.add_argument("-o", "--output", required=True, help="the subjects file to write")
    listing.add_argument("--session", help="only subjects with a T1w in this session (ses-<label>)")
    listing.add_argument("--bucket", default="openneuro.org", help="the bucket (default openneuro.org)")
    listing.add_argument("--endpoint-url", help="an S3 endpoint instead of AWS's (a mirror)")
    listing.set_defaults(func=_openneuro_subjects)


def _openneuro_subjects(args: argparse.Namespace) -> int:
    from mrisr.data.openneuro import FetchError, OpenNeuroSettings, write_subjects_file

    try:
        settings = OpenNeuroSettings(args.accession, bucket=args.bucket, endpoint_url=args.endpoint_url,
                                     session=args.session)
        found = write_subjects_file(settings, args.output)
    except (ValueError, FetchError) as err:
        print(f"mrisr: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(found)} subjects with a T1w scan written to {args.output}", file=sys.stderr)
    return 0


def _add_hcp_subjects(sub) -> None:
    from mrisr.data.hcp import HCP_BUCKET, HCP_PREFIX, HCP_REGION

    hcp = sub.add_parser(
        "hcp-subjects", help="list the HCP-1200 subjects that have a T1w into a subjects file (hcp.subjects_file)",
        description="Lists the subject folders of the release (s3://BUCKET/PREFIX/) and keeps those holding "
                    "T1w/T1w_acpc_dc_restore.nii.gz (1,113 of HCP-1200's 1,206), one ID a line, for the config "
                    "key hcp.subjects_file. AWS keys come from the environment, ~/.aws or --profile, as for the "
                    "workflow's downloads; they are never written or printed.",
    )
    hcp.add_argument("--out", required=True, help="the subjects file to write (e.g. config/hcp_subjects.txt)")
    hcp.add_argument("--bucket", default=HCP_BUCKET, help=f"S3 bucket (default {HCP_BUCKET})")
    hcp.add_argument("--prefix", default=HCP_PREFIX, help=f"key prefix of the release (default {HCP_PREFIX})")
    hcp.add_argument("--region", default=HCP_REGION, help=f"AWS region (default {HCP_REGION})")
    hcp.add_argument("--endpoint-url", help="S3 endpoint instead of AWS's (a mirror, a test server)")
    hcp.add_argument("--profile", help="named AWS profile holding the HCP keys (default: the standard chain)")
    hcp.add_argument("--workers", type=int, default=16, help="T1w checks at a time (default 16)")
    hcp.set_defaults(func=_hcp_subjects)


def _hcp_subjects(args: argparse.Namespace) -> int:
    from mrisr.data.hcp import FetchError, S3Settings, subjects_with_t1, write_subjects_file

    settings = S3Settings(bucket=args.bucket, prefix=args.prefix.strip("/"), region=args.region,
                          endpoint_url=args.endpoint_url, profile=args.profile)
    try:
        subjects, folders = subjects_with_t1(settings, workers=args.workers)
    except FetchError as err:
        print(f"mrisr: error: {err}", file=sys.stderr)
        return 2
    if not subjects:
        print(f"mrisr: error: no subject folder under s3://{args.bucket}/{settings.prefix}/ holds a T1w; "
              "check --bucket and --prefix", file=sys.stderr)
        return 2
    write_subjects_file(args.out, subjects, folders, settings)
    print(f"{len(subjects)} of {len(folders)} subjects have a T1w: {args.out} (set hcp.subjects_file to it)",
          file=sys.stderr)
    return 0


def _demo_bids(args: argparse.Namespace) -> int:
    from mrisr.data.demo import write_demo_bids

    try:
        files = write_demo_bids(args.output, args.subjects, args.voxel_size, args.seed, args.thick_slice,
                                args.slice_axis)
    except ValueError as err:
        print(f"mrisr: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(files)} T1w scans written under {args.output}", file=sys.stderr)
    if args.thick_slice > 1:
        from mrisr.data.demo import THICK_SLICE_MASKS

        print(f"their brain masks: local.mask: {Path(args.output).resolve() / THICK_SLICE_MASKS}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
