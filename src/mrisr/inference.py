"""Whole-volume super-resolution with a trained cascade (used by the workflow and the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mrisr.data.degrade import upsample
from mrisr.diffusion import parameterization
from mrisr.diffusion.cascade import run_cascade
from mrisr.diffusion.nets import UNet, unet_from_config
from mrisr.diffusion.sampler import sample, sliding_window
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
    return Stage(model=model.to(device).eval(), config=config, stage=stage, factor=factor, path=path)


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


def sampling_schedule(config: dict, method: str, steps: int) -> NoiseSchedule:
    """The full schedule (ancestral over all T steps) or a respaced one (``steps`` steps)."""
    d = config["diffusion"]
    full = make_schedule(d["schedule"], int(d["num_timesteps"]), float(d["noise_var"]))
    if method == "ancestral" and steps >= full.num_timesteps:
        return full
    return full.respace(spaced_timesteps(full.num_timesteps, steps))


def super_resolve_stage(
    stage: Stage,
    volume: np.ndarray,
    sampling: dict,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Super-resolve ``volume`` by the stage's factor; returns float32 in [0, 1] on the finer grid."""
    d = stage.config["diffusion"]
    order = int(stage.config["degrade"]["order"])
    prediction, target_kind = d["prediction"], d["target"]
    device = next(stage.model.parameters()).device
    cond_np = upsample(volume, stage.factor, order)
    patch = int(sampling["patch_size"])
    padded, crop = _pad_to(cond_np, min(patch, max(cond_np.shape)), stage.model.divisor)
    cond = torch.from_numpy(padded)[None, None].to(device)
    schedule = sampling_schedule(stage.config, sampling["method"], int(sampling["steps"]))
    lo, hi = parameterization.x0_range(target_kind)

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
        return parameterization.output_to_x0(prediction, schedule, xt, t, raw).clamp(lo, hi)

    x0 = sample(
        denoise, schedule, cond.shape, method=sampling["method"], eta=float(sampling["eta"]),
        generator=generator, device=device, progress=progress,
    )
    out = parameterization.from_diffusion_space(target_kind, x0, cond)
    out = out[0, 0].float().cpu().numpy()[crop]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def super_resolve(
    lr: np.ndarray,
    checkpoints: Sequence[str | Path],
    sampling: dict,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> list[np.ndarray]:
    """Run the whole cascade on an LR volume; returns every stage's output, the last being SR.

    Checkpoints must be given in stage order and come from one cascade.
    """
    dev = pick_device(device)
    stages = [load_stage(p, dev) for p in checkpoints]
    for k, stage in enumerate(stages):
        if stage.stage != k:
            raise CheckpointError(f"{stage.path}: holds stage {stage.stage}, expected stage {k}")
    generator = torch.Generator().manual_seed(int(seed))

    def runner(stage: Stage) -> Callable[[np.ndarray], np.ndarray]:
        def run(volume: np.ndarray) -> np.ndarray:
            log(f"stage {stage.stage}: x{stage.factor}, {volume.shape} -> {tuple(s * stage.factor for s in volume.shape)}, "
                f"{sampling['method']} {sampling['steps']} steps on {dev}")
            return super_resolve_stage(stage, volume, sampling, generator)
        return run

    return run_cascade(lr, [runner(s) for s in stages])
