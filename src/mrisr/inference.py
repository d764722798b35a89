"""Whole-volume super-resolution with a trained cascade (used by the workflow and the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mrisr.data.degrade import downsample, upsample
from mrisr.diffusion import analytic, parameterization
from mrisr.diffusion.cascade import run_cascade
from mrisr.diffusion.nets import UNet, unet_from_config
from mrisr.diffusion.sampler import sample, sliding_window, start_from
from mrisr.diffusion.schedule import NoiseSchedule, make_schedule, spaced_timesteps
from mrisr.training import autocast, pick_device


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Stage:
    """A trained cascade stage ready for sampling."""

    model: UNet
    config: dict
    stage: int
    factor: int
    path: Path
    x0_mse: dict | None = None  # the x0 prediction's error by timestep (mrisr.diffusion.analytic)


def load_stage(path: str | Path, device: torch.device) -> Stage:
    """Load a stage checkpoint (``weights_only=True``) and its EMA weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in ("ema", "config", "stage") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    config, stage = payload["config"], int(payload["stage"])
    model = unet_from_config(config["model"])
    try:
        model.load_state_dict(payload["ema"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model in its config ({err})") from None
    factor = int(config["cascade"]["factors"][stage])
    return Stage(model=model.to(device).eval(), config=config, stage=stage, factor=factor, path=path,
                 x0_mse=payload.get("x0_mse"))


def _pad_to(volume: np.ndarray, minimum: int, divisor: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Edge-pad so every side is >= minimum and divisible by divisor; return the crop back."""
    pads, crop = [], []
    for side in volume.shape:
        target = max(side, minimum)
        target = int(math.ceil(target / divisor) * divisor)
        before = (target - side) // 2
        pads.append((before, target - side - before))
        crop.append(slice(before, before + side))
    return np.pad(volume, pads, mode="edge"), tuple(crop)


def full_schedule(config: dict) -> NoiseSchedule:
    """The T-step schedule the stage was trained with."""
    d = config["diffusion"]
    return make_schedule(d["schedule"], int(d["num_timesteps"]), float(d["noise_var"]))


def sampling_schedule(config: dict, sampling: dict) -> NoiseSchedule:
    """The schedule the sampler walks: the full one (ancestral over all T steps) or a respaced one.

    ``sampling["steps"]`` steps are spread over [1, start_t] (t = T unless
    ``sampling["start_t"]`` truncates the reverse process).
    """
    full = full_schedule(config)
    start_t = sampling.get("start_t")
    t_max = full.num_timesteps - 1 if start_t is None else int(start_t) - 1
    steps = int(sampling["steps"])
    if sampling["method"] == "ancestral" and steps >= full.num_timesteps and start_t is None:
        return full
    return full.respace(spaced_timesteps(full.num_timesteps, min(steps, t_max + 1), t_max))


@dataclass
class StageOutput:
    """One stage's super-resolved volume (the mean of its samples) and their per-voxel sd."""

    mean: np.ndarray
    sd: np.ndarray | None  # None for a single sample


def data_consistency(estimate: np.ndarray, observed: np.ndarray, factor: int, order: int, iterations: int) -> np.ndarray:
    """Iterative back-projection (Irani & Peleg 1991) with the workflow's own degradation.

    Repeats estimate += upsample(observed - downsample(estimate)) so that the
    estimate, degraded as the LR volume was, reproduces the LR volume.
    """
    for _ in range(iterations):
        estimate = estimate + upsample(observed - downsample(estimate, factor, order), factor, order)
    return estimate


FLIPS = tuple(tuple(d for d in range(3) if k >> d & 1) for k in range(8))  # the 8 mirrorings of a volume
ESTIMATES = ("sample_mean", "posterior_mean")
VARIANCES = ("posterior", "analytic")


def steps_run(sampling: dict) -> dict:
    """``sampling`` as it will run: with the posterior-mean estimate and one
    sample only the first reverse step's x0 prediction is kept, so only that
    step runs (the later ones would change nothing)."""
    if sampling.get("estimate", "sample_mean") == "posterior_mean" and int(sampling.get("n_samples", 1)) == 1:
        return {**sampling, "steps": 1}
    return sampling


def super_resolve_stage(
    stage: Stage,
    volume: np.ndarray,
    sampling: dict,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> StageOutput:
    """Super-resolve ``volume`` by the stage's factor; float32 in [0, 1] on the finer grid.

    Draws ``sampling["n_samples"]`` samples (default 1). The point estimate is
    ``sampling["estimate"]``:

    - ``sample_mean`` (default): the mean of the samples;
    - ``posterior_mean``: the mean of the network's x0 predictions at the first
      reverse step, where x_T is pure noise, i.e. of estimates of E[x0 | LR]
      (the x0 prediction is trained with a squared loss, so at t = T it
      regresses on the condition alone). This is the minimum-mean-squared-error
      estimate that PSNR rewards; one posterior sample has twice its expected
      squared error, and the mean of N samples (1 + 1/N) times.

    ``sd`` is the per-voxel standard deviation of the samples either way. With
    ``sampling["flip_ensemble"]``, sample k is drawn on the volume mirrored by
    the (k mod 8)-th of the 8 flips and mirrored back (for a model trained with
    ``train.flip``), so the means also average over orientation (geometric
    self-ensemble, Lim et al. 2017). ``sampling["data_consistency"]``
    back-projection iterations (default 0) are applied to the point estimate.

    ``sampling["variance"]`` is the reverse steps' noise: ``posterior``
    (default) that of the sampler; ``analytic`` adds the x0 prediction's own
    error, measured at the end of training and stored in the checkpoint
    (Analytic-DPM, ``mrisr.diffusion.analytic``), so that few large steps
    spread their samples as the 1000-step sampler does.
    """
    d = stage.config["diffusion"]
    order = int(stage.config["degrade"]["order"])
    prediction, target_kind = d["prediction"], d["target"]
    estimate = sampling.get("estimate", "sample_mean")
    if estimate not in ESTIMATES:
        raise ValueError(f"sampling.estimate must be one of {', '.join(ESTIMATES)}, not {estimate!r}")
    if estimate == "posterior_mean" and sampling.get("start_t") is not None:
        raise ValueError("sampling.estimate 'posterior_mean' needs the reverse process to start from "
                         "pure noise (sampling.start_t: null)")
    variance = sampling.get("variance", "posterior")
    if variance not in VARIANCES:
        raise ValueError(f"sampling.variance must be one of {', '.join(VARIANCES)}, not {variance!r}")
    if variance == "analytic" and stage.x0_mse is None:
        raise CheckpointError(f"{stage.path}: holds no x0 error table (x0_mse), which sampling.variance "
                              "'analytic' needs; retrain the stage with this version, or use 'posterior'")
    device = next(stage.model.parameters()).device
    cond_np = upsample(volume, stage.factor, order)
    patch = int(sampling["patch_size"])
    padded, crop = _pad_to(cond_np, min(patch, max(cond_np.shape)), stage.model.divisor)
    n_samples = int(sampling.get("n_samples", 1))
    sampling = steps_run(sampling)
    schedule = sampling_schedule(stage.config, sampling)
    x0_var = analytic.x0_var_on(full_schedule(stage.config), schedule, stage.x0_mse) if variance == "analytic" else None
    truncated = sampling.get("start_t") is not None
    scale = parameterization.residual_scale(d)
    sigma_d = parameterization.sigma_data(d)
    lo, hi = parameterization.x0_range(target_kind, scale)
    flips = FLIPS if sampling.get("flip_ensemble", False) else ((),)

    samples, first_estimates = [], []
    for k in range(n_samples):
        axes = flips[k % len(flips)]
        cond = torch.from_numpy(np.ascontiguousarray(np.flip(padded, axes)))[None, None].to(device)
        first: list[torch.Tensor] = []

        @torch.no_grad()
        def denoise(xt: torch.Tensor, i: int) -> torch.Tensor:
            t_model = int(schedule.timestep_map[i])

            def predict(batch: torch.Tensor) -> torch.Tensor:
                t = torch.full((batch.shape[0],), t_model, dtype=torch.long, device=device)
                with autocast(device):
                    return stage.model(batch[:, :1], batch[:, 1:], t)

            raw = sliding_window(
                predict, torch.cat([xt, cond], dim=1), patch,
                float(sampling["overlap"]), int(sampling["batch_size"]),
            )
            t = torch.full((1,), i, dtype=torch.long, device=device)
            x0 = parameterization.output_to_x0(prediction, schedule, xt, t, raw, sigma_d).clamp(lo, hi)
            if not first:
                first.append(x0)
            return x0

        def to_image(x0: torch.Tensor) -> np.ndarray:
            out = parameterization.from_diffusion_space(target_kind, x0, cond, scale)
            return np.clip(np.flip(out[0, 0].float().cpu().numpy(), axes)[crop], 0.0, 1.0)

        x_start = None
        if truncated:  # start from the condition itself: x0 = 0 residual, or the spline image
            x0_init = parameterization.to_diffusion_space(target_kind, cond, cond, scale)
            x_start = start_from(schedule, x0_init, generator)
        x0 = sample(
            denoise, schedule, cond.shape, method=sampling["method"], eta=float(sampling["eta"]),
            generator=generator, device=device, x_start=x_start, progress=progress, x0_var=x0_var,
        )
        samples.append(to_image(x0))
        first_estimates.append(to_image(first[0]))
    stack = np.stack(samples)
    mean = (stack if estimate == "sample_mean" else np.stack(first_estimates)).mean(axis=0)
    iterations = int(sampling.get("data_consistency", 0))
    if iterations:
        mean = data_consistency(mean, volume, stage.factor, order, iterations)
    sd = stack.std(axis=0).astype(np.float32) if len(samples) > 1 else None
    return StageOutput(mean=np.clip(mean, 0.0, 1.0).astype(np.float32), sd=sd)


def load_cascade(checkpoints: Sequence[str | Path], device: torch.device) -> list[Stage]:
    """Load stage checkpoints given coarse to fine, checking they form one cascade in order."""
    if not checkpoints:
        raise CheckpointError("no stage checkpoints given")
    stages = [load_stage(p, device) for p in checkpoints]
    for k, stage in enumerate(stages):
        if stage.stage != k:
            raise CheckpointError(f"{stage.path}: holds stage {stage.stage}, expected stage {k}")
    return stages


def super_resolve(
    lr: np.ndarray,
    checkpoints: Sequence[str | Path] | Sequence[Stage],
    sampling: dict,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> list[StageOutput]:
    """Run the whole cascade on an LR volume; returns every stage's output, the last being SR.

    ``checkpoints`` are paths (loaded with ``load_cascade``) or loaded stages.
    Each stage conditions on the previous stage's mean. ``progress(stage,
    n_stages, step, n_steps)`` is called after every reverse step.
    """
    if checkpoints and isinstance(checkpoints[0], Stage):
        stages = list(checkpoints)
    else:
        stages = load_cascade(checkpoints, pick_device(device))
    dev = next(stages[0].model.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    outputs: list[StageOutput] = []

    def runner(stage: Stage) -> Callable[[np.ndarray], np.ndarray]:
        def run(volume: np.ndarray) -> np.ndarray:
            run_as = steps_run(sampling)
            log(f"stage {stage.stage}: x{stage.factor}, {volume.shape} -> {tuple(s * stage.factor for s in volume.shape)}, "
                f"{run_as['method']} {run_as['steps']} step(s), {run_as.get('n_samples', 1)} sample(s), "
                f"{run_as.get('estimate', 'sample_mean')}{' over flips' if run_as.get('flip_ensemble') else ''}, "
                f"{run_as.get('variance', 'posterior')} variance on {dev}")
            step_progress = None
            if progress is not None:
                step_progress = lambda i, n: progress(stage.stage, len(stages), i, n)  # noqa: E731
            outputs.append(super_resolve_stage(stage, volume, sampling, generator, step_progress))
            return outputs[-1].mean
        return run

    run_cascade(lr, [runner(s) for s in stages])
    return outputs
