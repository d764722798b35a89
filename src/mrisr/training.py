"""Training one cascade stage: random brain patches, the DDPM loss, EMA, checkpoints, resume, DDP.

The loss is the simple DDPM objective (Ho et al. 2020, eq. 14), written for
any parameterisation: t ~ U{1..T}, eps ~ N(0, noise_var I),
x_t = q_sample(x_0, t, eps), loss = || f(x_t, cond, t) - y ||^2 with y the
eps, x_0 or v target (``parameterization``). Parameters are averaged with an
exponential moving average (EMA), whose weights are the ones sampled from.
Training resumes exactly where it stopped (``mrisr.resume``) and runs on
several GPUs with DDP (``mrisr.distributed``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import mrisr
from mrisr.diffusion import analytic, parameterization
from mrisr.diffusion.cascade import StagePair
from mrisr.diffusion.nets import unet_from_config
from mrisr.diffusion.schedule import make_schedule, q_sample
from mrisr.distributed import World
from mrisr.io import atomic_path
from mrisr.resume import (
    RESUME_FORMAT,
    StopSignals,
    TrainingInterrupted,
    data_fingerprint,
    default_resume_path,
    load_resume,
    rng_state,
    set_rng_state,
)

LOG_COLUMNS = ("step", "train_loss", "val_loss", "lr", "seconds")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (and asked for or 'auto'), CPU otherwise."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {requested!r}; allowed: auto, cpu, cuda")
    if requested == "cpu" or not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        return torch.device("cpu")
    return torch.device("cuda")


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on CPU (full float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class PatchSampler:
    """Random cubic patches centred on brain voxels, drawn with a seeded numpy Generator.

    Volumes are zero-padded by half a patch so centres near the edge are valid.
    ``sample(n)`` returns (cond, target), float32 arrays of shape (n, 1, P, P, P).
    With ``flip``, each patch pair is mirrored along a random subset of the three
    axes (the same for condition and target): the degradation commutes with
    mirroring, so this is label-preserving augmentation that also lets
    inference average over mirrored inputs (``sampling.flip_ensemble``).
    """

    def __init__(
        self, pairs: Sequence[StagePair], patch_size: int, rng: np.random.Generator, flip: bool = False,
    ) -> None:
        if not pairs:
            raise ValueError("no training volumes")
        self.patch_size = patch_size
        self.rng = rng
        self.flip = flip
        half = patch_size // 2
        pad = [(half, patch_size - half)] * 3
        self.cond = [np.pad(p.cond, pad) for p in pairs]
        self.target = [np.pad(p.target, pad) for p in pairs]
        self.centres = [np.argwhere(p.mask) for p in pairs]
        for k, c in enumerate(self.centres):
            if len(c) == 0:
                raise ValueError(f"training volume {k} has an empty brain mask")

    def sample(self, n: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` patch positions; return the patches of ``rows`` of them (all by default).

        The generator advances by ``n`` draws whatever ``rows`` is, so workers
        that each keep their rows of one global batch stay in step.
        """
        p = self.patch_size
        picks = []
        for _ in range(n):
            k = int(self.rng.integers(len(self.centres)))
            centre = self.centres[k][int(self.rng.integers(len(self.centres[k])))]
            axes = tuple(np.flatnonzero(self.rng.integers(0, 2, size=3))) if self.flip else ()
            picks.append((k, centre, axes))
        picks = picks[rows]
        cond = np.empty((len(picks), 1, p, p, p), np.float32)
        target = np.empty((len(picks), 1, p, p, p), np.float32)
        for b, (k, c, axes) in enumerate(picks):
            box = tuple(slice(int(x), int(x) + p) for x in c)  # padded coords: centre - half + half
            cond[b, 0] = np.flip(self.cond[k][box], axes)
            target[b, 0] = np.flip(self.target[k][box], axes)
        return cond, target


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    final_val_loss: float
    seconds: float


def _lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def diffusion_loss(
    model: torch.nn.Module,
    schedule,
    prediction: str,
    target_kind: str,
    cond: torch.Tensor,
    volume: torch.Tensor,
    t: torch.Tensor,
    unit_noise: torch.Tensor,
    scale: float = 1.0,
    sigma_data: float = parameterization.SIGMA_DATA,
) -> torch.Tensor:
    """DDPM simple loss (eq. 14) for a batch: mean squared error of the chosen target.

    In diffusion space: with a residual scale s the loss is s^2 times that of
    the unscaled residual. For ``edm`` it is the x0 error weighted by
    1 / c_out^2 (EDM's loss weighting).
    """
    x0 = parameterization.to_diffusion_space(target_kind, volume, cond, scale)
    xt = q_sample(schedule, x0, t, unit_noise)
    y = parameterization.regression_target(prediction, schedule, x0, t, unit_noise, sigma_data)
    return F.mse_loss(model(xt, cond, t).float(), y)


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` through a temporary file and a rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_stage(
    train_pairs: Sequence[StagePair],
    val_pairs: Sequence[StagePair],
    config: dict,
    stage: int,
    checkpoint_path: str | Path,
    log_path: str | Path,
    device: str = "auto",
    log: Callable[[str], None] = print,
    resume_path: str | Path | None = None,
    checkpoint_every: int = 0,
    world: World | None = None,
    on_step: Callable[[int], None] | None = None,
    stop: StopSignals | None = None,
) -> TrainResult:
    """Train the U-Net of one cascade stage and write its checkpoint and loss log.

    ``config`` is the resolved workflow config (sections ``model``,
    ``diffusion``, ``train``); it is stored in the checkpoint. Training
    resumes from ``resume_path`` (default: ``resume.pt`` beside the
    checkpoint) when that file belongs to this stage, config and data; it
    writes that file every ``checkpoint_every`` steps (0: never) and when
    SIGTERM, SIGUSR1 or SIGINT arrives, then raises ``TrainingInterrupted``
    (``mrisr.resume``). Signals are caught by ``stop`` if given (a caller
    that has more to do after training holds it for its whole run), else
    while this function runs. ``world`` places this process among DDP
    workers (``mrisr.distributed``); by default training runs in this process
    alone on ``device``. ``on_step(n)`` is called after the n-th step.
    """
    args = (train_pairs, val_pairs, config, stage, Path(checkpoint_path), Path(log_path),
            world if world is not None else World(device=pick_device(device)), log,
            Path(resume_path) if resume_path else default_resume_path(checkpoint_path), int(checkpoint_every))
    if stop is not None:
        return _train(*args, stop, on_step)
    with StopSignals() as own:
        return _train(*args, own, on_step)


def _train(
    train_pairs: Sequence[StagePair],
    val_pairs: Sequence[StagePair],
    config: dict,
    stage: int,
    checkpoint_path: Path,
    log_path: Path,
    world: World,
    log: Callable[[str], None],
    resume_path: Path,
    checkpoint_every: int,
    stop: StopSignals,
    on_step: Callable[[int], None] | None,
) -> TrainResult:
    dcfg, tcfg = config["diffusion"], config["train"]
    prediction, target_kind = dcfg["prediction"], dcfg["target"]
    parameterization.check(prediction, target_kind)
    scale = parameterization.residual_scale(dcfg)
    sigma_d = parameterization.sigma_data(dcfg)
    dev = world.device
    seed = int(tcfg["seed"]) + 1000 * stage
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    schedule = make_schedule(dcfg["schedule"], int(dcfg["num_timesteps"]), float(dcfg["noise_var"]))
    model = unet_from_config(config["model"]).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = world.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    workers = f" x {world.size} workers" if world.size > 1 else ""
    log(f"stage {stage}: U-Net with {n_params:,} parameters on {dev}{workers}; "
        f"{len(train_pairs)} train, {len(val_pairs)} val volumes")

    patch, batch = int(tcfg["patch_size"]), int(tcfg["batch_size"])
    if patch % model.divisor:
        raise ValueError(f"train.patch_size {patch} must be divisible by {model.divisor}")
    if batch < world.size:
        raise ValueError(f"train.batch_size {batch} is smaller than the {world.size} training workers")
    rows = world.rows(batch)
    share = (rows.stop - rows.start) / batch  # this worker's part of the batch mean
    sampler = PatchSampler(train_pairs, patch, rng, flip=bool(tcfg.get("flip", False)))
    # A fixed validation batch: same patches, timesteps and noise at every evaluation.
    val_gen = torch.Generator().manual_seed(seed + 1)
    val_sampler = PatchSampler(val_pairs, patch, np.random.default_rng(seed + 1))
    n_val = int(tcfg["val_patches"])
    val_cond, val_target = (torch.from_numpy(a) for a in val_sampler.sample(n_val))
    val_t = torch.linspace(0, schedule.num_timesteps - 1, n_val).round().long()
    val_noise = torch.randn(val_cond.shape, generator=val_gen)

    steps, warmup = int(tcfg["steps"]), int(tcfg["warmup_steps"])
    val_every, decay = int(tcfg["val_every"]), float(tcfg["ema_decay"])
    noise_gen = torch.Generator().manual_seed(seed + 2)
    log_rows: list[tuple] = []
    running, count, val_loss, seconds_before, first = 0.0, 0, float("nan"), 0.0, 0
    identity = {"format": RESUME_FORMAT, "stage": stage, "config": config,
                "data": data_fingerprint([*train_pairs, *val_pairs])}
    state = load_resume(resume_path, identity, log)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], rng, noise_gen, dev)
        first = int(state["step"])
        progress = state["progress"]
        log_rows = [tuple(r) for r in progress["rows"]]
        running, count = float(progress["running"]), int(progress["count"])
        val_loss, seconds_before = float(progress["val_loss"]), float(progress["seconds"])
        log(f"resumed from step {first} of {steps} ({resume_path})")

    def payload(done: int, seconds: float) -> dict:
        return {
            "format": RESUME_FORMAT,
            "mrisr_version": mrisr.__version__,
            "stage": stage,
            "step": done,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(rng, noise_gen, dev),
            "config": config,
            "data": identity["data"],
            "progress": {"rows": [list(r) for r in log_rows], "running": running, "count": count,
                         "val_loss": val_loss, "seconds": seconds},
        }

    start = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    for step in range(first, steps):
        lr = _lr_at(step, float(tcfg["lr"]), warmup, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Every worker draws the whole batch (same streams) and keeps its rows.
        cond_np, target_np = sampler.sample(batch, rows)
        cond, volume = torch.from_numpy(cond_np).to(dev), torch.from_numpy(target_np).to(dev)
        t = torch.from_numpy(rng.integers(0, schedule.num_timesteps, size=batch)[rows]).long().to(dev)
        noise = torch.randn((batch, *cond.shape[1:]), generator=noise_gen)[rows].to(dev)
        model.train()
        with autocast(dev):
            loss = diffusion_loss(net, schedule, prediction, target_kind, cond, volume, t, noise, scale, sigma_d)
        optimizer.zero_grad(set_to_none=True)
        (loss * (share * world.size)).backward()  # DDP averages over workers: the batch mean
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
        optimizer.step()
        _ema_update(ema, model, min(decay, (1.0 + step) / (10.0 + step)))
        done = step + 1
        if on_step is not None:
            on_step(done)
        batch_loss, stops = world.sum([float(loss.detach()) * share, float(stop.requested)])
        running += batch_loss
        count += 1
        if done % val_every == 0 or done == steps:
            if world.is_main:
                with torch.no_grad(), autocast(dev):
                    val_loss = float(
                        diffusion_loss(
                            ema, schedule, prediction, target_kind,
                            val_cond.to(dev), val_target.to(dev), val_t.to(dev), val_noise.to(dev), scale, sigma_d,
                        )
                    )
            elapsed = seconds_before + time.perf_counter() - start
            log_rows.append((done, running / count, val_loss, lr, elapsed))
            log(f"step {done}/{steps}  train {running / count:.5f}  val {val_loss:.5f}  lr {lr:.2e}  {elapsed:.0f}s")
            running, count = 0.0, 0
        if done < steps and (stops > 0 or (checkpoint_every and done % checkpoint_every == 0)):
            if world.is_main:
                save_checkpoint(resume_path, payload(done, seconds_before + time.perf_counter() - start))
            world.barrier()  # no worker leaves before the checkpoint is on disk
            if stops > 0:
                raise TrainingInterrupted(done, resume_path, stop.received or "a signal to another worker")

    seconds = seconds_before + time.perf_counter() - start
    if world.is_main:
        final = payload(steps, seconds)
        del final["progress"], final["data"]
        final["format"], final["train_seconds"] = 1, seconds
        # The EMA network's x0 error by timestep on the validation patches, for
        # the analytic reverse variance (sampling.variance: analytic).
        grid = analytic.error_grid(schedule)
        with autocast(dev):
            mse = analytic.measure_x0_error(ema, schedule, prediction, target_kind, val_cond.to(dev),
                                            val_target.to(dev), val_noise.to(dev), grid, scale, sigma_d)
        final["x0_mse"] = {"t": grid, "mse": mse}
        log(f"stage {stage}: x0 error by t on {n_val} val patches: "
            + ", ".join(f"t={t} {m:.2e}" for t, m in list(zip(grid, mse))[:: max(1, len(grid) // 5)]))
        save_checkpoint(checkpoint_path, final)
        with atomic_path(log_path) as tmp:
            with open(tmp, "w") as fh:
                fh.write("\t".join(LOG_COLUMNS) + "\n")
                for row in log_rows:
                    fh.write(f"{row[0]}\t{row[1]:.6g}\t{row[2]:.6g}\t{row[3]:.6g}\t{row[4]:.2f}\n")
        resume_path.unlink(missing_ok=True)
    world.barrier()
    return TrainResult(steps, log_rows[-1][1] if log_rows else float("nan"), val_loss, seconds)
