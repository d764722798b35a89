"""Whole-volume super-resolution with a trained cascade (used by the workflow and the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mrisr.config import SamplingOptions
from mrisr.data.degrade import Degradation, factor_label, upsample
from mrisr.device import autocast, pick_device
from mrisr.diffusion import analytic
from mrisr.diffusion.cascade import run_cascade, stage_grids
from mrisr.diffusion.nets import UNet, unet_from_config
from mrisr.diffusion.parameterization import Parameterization
from mrisr.diffusion.predictor import (
    MIRRORINGS, ShuffleResNet, predictor_flips, predictor_from_config, predictor_output,
)
from mrisr.diffusion.sampler import prior_sample, sample, sliding_window, start_from
from mrisr.diffusion.schedule import NoiseSchedule, full_schedule, sampling_schedule
from mrisr.io import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class Stage:
    """A trained cascade stage ready for sampling."""

    model: UNet
    config: dict
    stage: int
    factor: tuple[int, int, int]  # per axis
    path: Path
    param: Parameterization  # what the network's output means (the config's diffusion section)
    x0_mse: dict | None = None  # the x0 prediction's error by timestep (mrisr.diffusion.analytic)
    predictor: ShuffleResNet | None = None  # predict-and-refine's g, carried in the checkpoint

    @property
    def predictor_flips(self) -> tuple[tuple[int, ...], ...]:
        """The mirrorings g's output is averaged over (``predictor_flips``)."""
        return predictor_flips(self.config)

    @property
    def regression(self) -> bool:
        """Trained as the regression baseline (``train.objective: regression``): sampled in one pass."""
        return self.config["train"].get("objective", "diffusion") == "regression"


def _read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A stage checkpoint's payload (``weights_only=True``), checked for what sampling needs.

    With ``mmap`` the file is mapped, not read: tensors are read only when
    touched, so the config of a large checkpoint costs little.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    missing = [k for k in ("ema", "config", "stage") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def cascade_configs(checkpoints: Sequence[str | Path]) -> list[dict]:
    """Each stage checkpoint's stored config, coarse to fine, without loading its weights (for planning:
    the workflow's apply mode reads the protocol and factors when it parses); checked like ``load_cascade``."""
    if not checkpoints:
        raise CheckpointError("no stage checkpoints given")
    configs = []
    for k, path in enumerate(checkpoints):
        payload = _read_checkpoint(Path(path), mmap=True)
        if int(payload["stage"]) != k:
            raise CheckpointError(f"{path}: holds stage {int(payload['stage'])}, expected stage {k}")
        configs.append(payload["config"])
    return configs


def load_stage(path: str | Path, device: torch.device) -> Stage:
    """Load a stage checkpoint (``weights_only=True``): the diffusion model's EMA weights, and the stage's
    predictor's when the design is predict-and-refine (``diffusion.target: predictor_residual``)."""
    path = Path(path)
    payload = _read_checkpoint(path)
    config, stage = payload["config"], int(payload["stage"])
    if payload.get("network") == "predictor":
        raise CheckpointError(f"{path}: a stage's predictor alone; give the stage's checkpoint.pt, which carries it")
    param = Parameterization.from_diffusion(config["diffusion"])
    model = unet_from_config(config["model"], cond_channels=param.cond_channels)
    _load_weights(model, payload["ema"], path, "the model in its config")
    factor = stage_grids(config["cascade"]["factors"])[stage].factor
    predictor = None
    if param.target == "predictor_residual":
        if "predictor" not in payload:
            raise CheckpointError(f"{path}: a predict-and-refine stage without its predictor's weights")
        predictor = predictor_from_config(config["predictor"], factor)
        _load_weights(predictor, payload["predictor"]["ema"], path, "the predictor in its config")
        predictor = predictor.to(device).eval()
    return Stage(model=model.to(device).eval(), config=config, stage=stage, factor=factor, path=path,
                 param=param, x0_mse=payload.get("x0_mse"), predictor=predictor)


def _load_weights(model: torch.nn.Module, weights: dict, path: Path, what: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {what} ({err})") from None


def _pad_to(volume: np.ndarray, minimum: int, divisor: Sequence[int],
            align: Sequence[int] = (1, 1, 1)) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Edge-pad the spatial sides of (C, *S) so each is >= minimum and divisible by its axis's divisor, by a
    multiple of its ``align`` before (a predictor's LR grid keeps its phase); return the spatial crop back."""
    pads, crop = [(0, 0)], []
    for side, divisor, align in zip(volume.shape[1:], divisor, align):
        target = max(side, minimum)
        target = int(math.ceil(target / divisor) * divisor)
        before = (target - side) // 2 // align * align
        pads.append((before, target - side - before))
        crop.append(slice(before, before + side))
    return np.pad(volume, pads, mode="edge"), tuple(crop)


@dataclass
class StageOutput:
    """One stage's super-resolved volume (its estimate), the per-voxel sd of its samples, and, where there are
    some, its predictor's output alone and its first sample."""

    mean: np.ndarray
    sd: np.ndarray | None  # None for a single sample
    predictor: np.ndarray | None = None  # g alone (predict, then refine)
    sample: np.ndarray | None = None  # the first sample


def data_consistency(estimate: np.ndarray, observed: np.ndarray, factor: int | Sequence[int], iterations: int,
                     degradation: Degradation = Degradation()) -> np.ndarray:
    """Iterative back-projection (Irani & Peleg 1991) with the workflow's own ``degradation``.

    Repeats estimate += upsample(observed - downsample(estimate)) so that the
    estimate, degraded as the LR volume was, reproduces the LR volume.
    """
    for _ in range(iterations):
        residual = observed - degradation.downsample(estimate, factor)
        estimate = estimate + upsample(residual, factor, degradation.order)
    return estimate


FLIPS = MIRRORINGS  # the 8 mirrorings of a volume
@dataclass(frozen=True)
class _StageSampler:
    """One stage's reverse process under given sampling options: schedule, noise, network calls."""

    stage: Stage
    options: SamplingOptions
    schedule: NoiseSchedule
    x0_var: np.ndarray | None
    device: torch.device

    @classmethod
    def build(cls, stage: Stage, options: SamplingOptions) -> "_StageSampler":
        diffusion = stage.config["diffusion"]
        schedule = sampling_schedule(diffusion, options)
        x0_var = None
        if options.variance == "analytic":
            if stage.x0_mse is None:
                raise CheckpointError(f"{stage.path}: holds no x0 error table (x0_mse), which sampling.variance "
                                      "'analytic' needs; retrain the stage with this version, or use 'posterior'")
            x0_var = analytic.x0_var_on(full_schedule(diffusion), schedule, stage.x0_mse)
        return cls(stage, options, schedule, x0_var, next(stage.model.parameters()).device)

    def network_pass(self, xt: torch.Tensor, cond: torch.Tensor, t_model: int) -> torch.Tensor:
        """The network's output over the whole volume at training timestep ``t_model``, from overlapping patches."""
        model, options, device = self.stage.model, self.options, self.device

        def predict(batch: torch.Tensor) -> torch.Tensor:
            t = torch.full((batch.shape[0],), t_model, dtype=torch.long, device=device)
            with autocast(device):
                return model(batch[:, :1], batch[:, 1:], t)

        return sliding_window(predict, torch.cat([xt, cond], dim=1), options.patch_size, options.overlap,
                              options.batch_size)

    def denoiser(self, cond: torch.Tensor, first: list[torch.Tensor]) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """x_t -> x0_hat over the whole volume, from overlapping patches; keeps the first step's x0_hat in ``first``."""

        @torch.no_grad()
        def denoise(xt: torch.Tensor, i: int) -> torch.Tensor:
            raw = self.network_pass(xt, cond, int(self.schedule.timestep_map[i]))
            t = torch.full((1,), i, dtype=torch.long, device=self.device)
            x0 = self.stage.param.x0_estimate(self.schedule, xt, t, raw)
            if not first:
                first.append(x0)
            return x0

        return denoise

    @torch.no_grad()
    def regress(self, cond: torch.Tensor) -> torch.Tensor:
        """The regression baseline's x0: one pass over the volume, x_t = 0 and t = 0 (``training.loop.regression_loss``)."""
        return self.network_pass(torch.zeros_like(cond[:, :1]), cond, 0)

    def draw(
        self, padded: np.ndarray, crop: tuple[slice, ...], axes: tuple[int, ...],
        generator: torch.Generator, progress: Callable[[int, int], None] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sample of the stage's output on the condition (C, *S) mirrored by ``axes``, and its first-step
        x0 prediction (the posterior-mean estimate), both mirrored back and cropped."""
        param = self.stage.param
        cond = torch.from_numpy(np.ascontiguousarray(np.flip(padded, tuple(a + 1 for a in axes))))[None].to(self.device)
        first: list[torch.Tensor] = []

        def to_image(x0: torch.Tensor) -> np.ndarray:
            out = param.from_diffusion_space(x0, cond)
            return np.clip(np.flip(out[0, 0].float().cpu().numpy(), axes)[crop], 0.0, 1.0)

        if self.stage.regression:
            image = to_image(self.regress(cond))
            return image, image
        shape = (1, 1, *cond.shape[2:])
        if self.options.start_t is not None:  # from the condition itself: x0 = 0 residual, or the spline image
            x_start = start_from(self.schedule, param.to_diffusion_space(param.base(cond), cond), generator)
        else:
            x_start = prior_sample(self.schedule, shape, generator, self.device)
        x0 = sample(
            self.denoiser(cond, first), self.schedule, x_start, method=self.options.method,
            eta=float(self.options.eta), generator=generator, progress=progress, x0_var=self.x0_var,
        )
        return to_image(x0), to_image(first[0])


def load_predictor(path: str | Path, device: torch.device) -> tuple[ShuffleResNet, tuple[tuple[int, ...], ...]]:
    """A stage's trained predictor (its ``predictor.pt``) and the mirrorings its output is averaged over."""
    path = Path(path)
    payload = _read_checkpoint(path)
    if payload.get("network") != "predictor":
        raise CheckpointError(f"{path}: not a predictor checkpoint")
    config, stage = payload["config"], int(payload["stage"])
    model = predictor_from_config(config["predictor"], stage_grids(config["cascade"]["factors"])[stage].factor)
    _load_weights(model, payload["ema"], path, "the predictor in its config")
    return model.to(device).eval(), predictor_flips(config)


def super_resolve_stage(
    stage: Stage,
    volume: np.ndarray,
    options: SamplingOptions,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> StageOutput:
    """Super-resolve ``volume`` by the stage's factor; float32 in [0, 1] on the finer grid.

    Draws ``options.n_samples`` samples. For a predict-and-refine stage the
    condition carries the predictor's output g (``predictor_output``) as a
    second channel and a sample is g plus a sampled residual. The point
    estimate is ``options.estimate``:

    - ``predictor``: g alone (no sample is drawn for it; with one sample none is drawn at all);
    - ``sample_mean``: the mean of the samples;
    - ``posterior_mean``: the mean of the network's x0 predictions at the first
      reverse step, where x_T is pure noise, i.e. of estimates of E[x0 | LR]
      (the x0 prediction is trained with a squared loss, so at t = T it
      regresses on the condition alone). This is the minimum-mean-squared-error
      estimate that PSNR rewards; one posterior sample has twice its expected
      squared error, and the mean of N samples (1 + 1/N) times.

    ``sd`` is the per-voxel standard deviation of the samples either way. With
    ``options.flip_ensemble``, sample k is drawn on the volume mirrored by the
    (k mod 8)-th of the 8 flips and mirrored back (for a model trained with
    ``train.flip``), so the means also average over orientation (geometric
    self-ensemble, Lim et al. 2017). ``options.data_consistency``
    back-projection iterations are applied to the point estimate.

    ``options.variance`` is the reverse steps' noise: ``posterior`` that of
    the sampler; ``analytic`` adds the x0 prediction's own error, measured at
    the end of training and stored in the checkpoint (Analytic-DPM,
    ``mrisr.diffusion.analytic``), so that few large steps spread their
    samples as the 1000-step sampler does.
    """
    order = int(stage.config["degrade"]["order"])
    cond_np = upsample(volume, stage.factor, order)
    g = predictor_output(stage.predictor, cond_np, stage.predictor_flips) if stage.predictor is not None else None
    if options.estimate == "predictor" and g is None:
        raise CheckpointError(f"{stage.path}: sampling.estimate 'predictor' needs a predict-and-refine stage "
                              "(diffusion.target: predictor_residual); this one has no predictor")
    if options.estimate == "predictor" and options.n_samples == 1:  # g alone: nothing to sample
        return StageOutput(mean=np.clip(g, 0.0, 1.0), sd=None, predictor=np.clip(g, 0.0, 1.0))
    sampler = _StageSampler.build(stage, options)
    channels = np.stack([cond_np] if g is None else [cond_np, g])
    divisor = [math.lcm(stage.model.divisor, f) for f in stage.factor]
    padded, crop = _pad_to(channels, min(options.patch_size, max(cond_np.shape)), divisor,
                           stage.factor if g is not None else (1, 1, 1))
    flips = FLIPS if options.flip_ensemble else ((),)
    draws = [sampler.draw(padded, crop, flips[k % len(flips)], generator, progress) for k in range(options.n_samples)]
    samples = np.stack([d[0] for d in draws])
    if options.estimate == "predictor":
        mean = g
    else:
        mean = (samples if options.estimate == "sample_mean" else np.stack([d[1] for d in draws])).mean(axis=0)
    if options.data_consistency:
        mean = data_consistency(mean, volume, stage.factor, options.data_consistency,
                                Degradation.from_config(stage.config["degrade"]))
    sd = samples.std(axis=0).astype(np.float32) if len(draws) > 1 and not stage.regression else None
    return StageOutput(mean=np.clip(mean, 0.0, 1.0).astype(np.float32), sd=sd,
                       predictor=None if g is None else np.clip(g, 0.0, 1.0), sample=samples[0])


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
    options: SamplingOptions,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> list[StageOutput]:
    """Run the whole cascade on an LR volume; returns every stage's output, the last being SR.

    ``checkpoints`` are paths (loaded with ``load_cascade``) or loaded stages.
    Each stage conditions on the previous stage's mean; the noise comes from
    one generator seeded with ``options.seed``. ``progress(stage, n_stages,
    step, n_steps)`` is called after every reverse step.
    """
    if checkpoints and isinstance(checkpoints[0], Stage):
        stages = list(checkpoints)
    else:
        stages = load_cascade(checkpoints, pick_device(device))
    dev = next(stages[0].model.parameters()).device
    generator = torch.Generator().manual_seed(int(options.seed))
    outputs: list[StageOutput] = []

    def runner(stage: Stage) -> Callable[[np.ndarray], np.ndarray]:
        def run(volume: np.ndarray) -> np.ndarray:
            fine = tuple(s * f for s, f in zip(volume.shape, stage.factor))
            log(f"stage {stage.stage}: x{factor_label(stage.factor)}, {volume.shape} -> {fine}, "
                f"{options.describe()} on {dev}")
            step_progress = None
            if progress is not None:
                step_progress = lambda i, n: progress(stage.stage, len(stages), i, n)  # noqa: E731
            outputs.append(super_resolve_stage(stage, volume, options, generator, step_progress))
            return outputs[-1].mean
        return run

    run_cascade(lr, [runner(s) for s in stages])
    return outputs
