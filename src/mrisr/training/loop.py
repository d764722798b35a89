"""Training one cascade stage's networks: the predictor's pixel loss, the DDPM loss, EMA, checkpoints, resume.

One loop trains both networks of a stage (``StageRun.network``): the
predictor g of predict-and-refine first (``predictor``: a pixel loss, MSE or
L1, of g(cond) against the target; ``diffusion.predictor``), then the
diffusion model (``diffusion``), whose condition then holds g's output as a
second channel (read from the stage caches, where the predict rule wrote it)
and whose x_0 is the residual over it (``diffusion.parameterization``).

The loss is the simple DDPM objective (Ho et al. 2020, eq. 14), written for
any parameterisation: t ~ U{1..T}, eps ~ N(0, noise_var I),
x_t = q_sample(x_0, t, eps), loss = || f(x_t, cond, t) - y ||^2 with y the
eps, x_0, v or edm target (``diffusion.parameterization``). Parameters are
averaged with an exponential moving average (EMA), whose weights are the ones
sampled from.

``TrainLoop`` holds everything a step depends on (model, EMA, optimiser,
random streams, the loss log so far) and captures and restores it
(``state_dict`` / ``load_state_dict``), so training resumes exactly where it
stopped (``mrisr.resume``) and runs on several GPUs with DDP
(``mrisr.distributed``). ``train_stage`` drives it.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import mrisr
from mrisr.config import TrainSettings
from mrisr.data.degrade import factor_label
from mrisr.device import autocast, pick_device
from mrisr.diffusion import analytic
from mrisr.diffusion.cascade import StagePair, stage_grids
from mrisr.diffusion.nets import unet_from_config
from mrisr.diffusion.parameterization import Parameterization
from mrisr.diffusion.predictor import predictor_from_config
from mrisr.diffusion.schedule import NoiseSchedule, full_schedule, q_sample
from mrisr.distributed import World
from mrisr.io import atomic_path, write_tsv
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
from mrisr.training.cache import MemoryVolume, PatchSource
from mrisr.training.patches import CondAugment, IntensityAugment, PatchSampler, batch_loader

LOG_COLUMNS = ("step", "train_loss", "val_loss", "lr", "seconds", "parameters", "peak_rss_mb", "data_wait_s")


def peak_rss_mb() -> float:
    """This process's peak resident size so far (Linux: VmHWM), MB. Loader workers are processes of their own."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 1024 ** 2 if sys.platform == "darwin" else peak / 1024


@dataclass(frozen=True)
class StageRun:
    """What one stage's training is and where it writes.

    ``config`` is the resolved model config (sections ``cascade``,
    ``degrade``, ``diffusion``, ``model``, ``train``, and ``device``); it is
    stored in the checkpoint. The resume checkpoint lives at ``resume``
    (default: ``resume.pt`` beside the checkpoint) and is written every
    ``checkpoint_every`` steps (0: only when a stop signal arrives).
    """

    config: dict
    stage: int
    checkpoint: str
    log_tsv: str
    resume: str | None = None
    checkpoint_every: int = 0
    loader_workers: int | None = None  # processes that make patches ahead of the loop; None: see ``workers``
    network: str = "diffusion"  # or "predictor": which of the stage's two networks this run trains
    predictor: str | None = None  # the stage's trained predictor checkpoint, carried inside the diffusion's

    @property
    def settings(self) -> TrainSettings:
        """The training settings of this run's network, from the ``predictor`` section or ``train``, with the
        schema's defaults filled in and validated once (``config.TrainSettings``)."""
        name = "predictor" if self.network == "predictor" else "train"
        return TrainSettings.from_section(name, self.config.get(name, {}))

    @property
    def resume_path(self) -> Path:
        return Path(self.resume) if self.resume else default_resume_path(self.checkpoint)

    def workers(self, device: torch.device) -> int:
        """Loader processes: ``loader_workers`` if set; by default, on a GPU, one per CPU thread of this
        training process but its own (``torch.get_num_threads()`` - 1), and none on the CPU, where the
        network's step is slow beside a patch's reading and every core already computes it."""
        if self.loader_workers is not None:
            return int(self.loader_workers)
        return max(0, torch.get_num_threads() - 1) if device.type == "cuda" else 0


@dataclass
class TrainResult:
    steps: int
    final_train_loss: float
    final_val_loss: float
    seconds: float
    data_wait_seconds: float = 0.0  # of ``seconds``, spent waiting for patches


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def diffusion_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    param: Parameterization,
    cond: torch.Tensor,
    volume: torch.Tensor,
    t: torch.Tensor,
    unit_noise: torch.Tensor,
) -> torch.Tensor:
    """DDPM simple loss (eq. 14) for a batch: mean squared error of the chosen target.

    In diffusion space: with a residual scale s the loss is s^2 times that of
    the unscaled residual. For ``edm`` it is the x0 error weighted by
    1 / c_out^2 (EDM's loss weighting).
    """
    x0 = param.to_diffusion_space(volume, cond)
    xt = q_sample(schedule, x0, t, unit_noise)
    return F.mse_loss(model(xt, cond, t).float(), param.regression_target(schedule, x0, t, unit_noise))


def regression_loss(
    model: torch.nn.Module, param: Parameterization, cond: torch.Tensor, volume: torch.Tensor,
) -> torch.Tensor:
    """The regression baseline's loss (``train.objective: regression``): mean squared error of x0 predicted
    from the condition alone, the network's x_t input zero and its timestep 0; what E[x0 | LR] is fitted with."""
    x0 = param.to_diffusion_space(volume, cond)
    t = torch.zeros(cond.shape[0], dtype=torch.long, device=cond.device)
    return F.mse_loss(model(torch.zeros_like(x0), cond, t).float(), x0)


def predictor_loss(net: torch.nn.Module, cond_and_mask: torch.Tensor, volume: torch.Tensor, loss: str) -> torch.Tensor:
    """The predictor's pixel loss over the brain: the mean squared (``mse``, fits E[x0 | LR]) or absolute
    (``l1``) error of g(cond) inside the brain mask, which comes as the batch's last condition channel.

    The mask only weights the loss (the network never sees it): inside a patch centred on the brain, the
    scalp's bright, sharp layers have several times the brain's spline error and would otherwise spend the
    predictor's training on the head (measured: docs/benchmarks.md, "The predictor").
    """
    cond, weight = cond_and_mask[:, :-1], cond_and_mask[:, -1:]
    err = net(cond).float() - volume
    err = err.abs() if loss == "l1" else err * err
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


def build_network(run: StageRun) -> torch.nn.Module:
    """The network a run trains: the stage's predictor, or its diffusion U-Net (conditioned on g's output too
    for ``predictor_residual``)."""
    if run.network == "predictor":
        factor = stage_grids(run.config["cascade"]["factors"])[run.stage].factor
        return predictor_from_config(run.config["predictor"], factor)
    param = Parameterization.from_diffusion(run.config["diffusion"])
    return unet_from_config(run.config["model"], cond_channels=param.cond_channels)


def load_predictor_payload(path: str | Path) -> dict:
    """What a diffusion checkpoint carries of its stage's predictor: its config, stage, EMA weights, train time."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("network") != "predictor":
        raise ValueError(f"{path}: not a predictor checkpoint")
    return {k: payload[k] for k in ("config", "stage", "ema", "train_seconds")}


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` through a temporary file and a rename (never a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass(frozen=True)
class _ValidationBatch:
    """A fixed validation batch: the same patches, timesteps and noise at every evaluation."""

    cond: torch.Tensor
    target: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def draw(cls, volumes: Sequence[PatchSource], patch: int, n: int, seed: int, num_timesteps: int,
             cond_names: Sequence[str] = ("cond",), align: int | Sequence[int] = 1) -> "_ValidationBatch":
        gen = torch.Generator().manual_seed(seed)
        sampler = PatchSampler(volumes, patch, seed, cond_names=cond_names, align=align)
        cond, target = (torch.from_numpy(a) for a in sampler.batch(0, range(n)))
        t = torch.linspace(0, num_timesteps - 1, n).round().long()
        return cls(cond, target, t, torch.randn(target.shape, generator=gen))


class TrainLoop:
    """The state of one stage's training and the steps that advance it.

    Everything a step depends on is an attribute: model, EMA, optimiser, the
    numpy Generator that draws timesteps, the torch Generator that draws the
    noise, the loss log so far; the step's patches are a function of the seed
    and the step (``training.patches``), made ahead by the loader's workers. ``state_dict`` and
    ``load_state_dict`` capture and restore all of it (``mrisr.resume``).
    Every DDP worker (``world``) draws the whole global batch from the same
    streams and keeps its own rows.
    """

    def __init__(
        self, train: Sequence[PatchSource | StagePair], val: Sequence[PatchSource | StagePair], run: StageRun,
        world: World,
    ) -> None:
        settings = run.settings
        self.run, self.world, self.settings = run, world, settings
        self.param = Parameterization.from_diffusion(run.config["diffusion"])
        self.predictor = run.network == "predictor"
        self.regression = not self.predictor and settings.objective == "regression"
        seed = settings.seed + 1000 * run.stage
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.schedule = full_schedule(run.config["diffusion"])
        self.model = build_network(run).to(world.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net = world.wrap(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=0.0)
        self.patch, self.batch, self.steps = settings.patch_size, settings.batch_size, settings.steps
        if not self.predictor and self.patch % self.model.divisor:  # the predictor's is checked below, per axis
            raise ValueError(f"train.patch_size {self.patch} must be divisible by {self.model.divisor}")
        if self.batch < world.size:
            raise ValueError(f"train.batch_size {self.batch} is smaller than the {world.size} training workers")
        self.rows = world.rows(self.batch)
        self.share = (self.rows.stop - self.rows.start) / self.batch  # this worker's part of the batch mean
        train, val = sources(train), sources(val)
        augment = CondAugment.from_mapping(settings.cond_augment) if run.stage > 0 else None
        # the predictor's batches carry the brain mask last, to weight its loss (``predictor_loss``)
        names = ("cond", "mask") if self.predictor else ("cond", "pred") if self.param.cond_channels == 2 else ("cond",)
        align = self.model.divisor if self.predictor else 1  # the predictor's LR grid, per axis
        if self.predictor and any(self.patch % a for a in align):
            raise ValueError(f"predictor.patch_size {self.patch} must be divisible by the stage factor "
                             f"{factor_label(align)} along every axis")
        self.sampler = PatchSampler(train, self.patch, seed, flip=settings.flip, augment=augment,
                                    cond_names=names, align=align,
                                    intensity=IntensityAugment.from_mapping(settings.intensity_augment))
        self.val = _ValidationBatch.draw(val, self.patch, settings.val_patches, seed + 1,
                                         self.schedule.num_timesteps, names, align)
        self.noise_gen = torch.Generator().manual_seed(seed + 2)
        self.data = data_fingerprint([v.digest for v in (*train, *val)])
        self.step, self.log_rows, self.running, self.count = 0, [], 0.0, 0
        self.val_loss, self.seconds_before, self.data_wait, self.data_wait_before = float("nan"), 0.0, 0.0, 0.0
        self.batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def identity(self) -> dict:
        """What a resume checkpoint must match to continue this run: format, stage, config and data."""
        return {"format": RESUME_FORMAT, "stage": self.run.stage, "config": self.run.config, "data": self.data}

    def state_dict(self, seconds: float) -> dict:
        """The resume checkpoint: everything the next step depends on, as tensors and plain values."""
        dev = self.world.device
        return {
            **self.identity(), "mrisr_version": mrisr.__version__, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.rng, self.noise_gen, dev),
            "progress": {"rows": [list(r) for r in self.log_rows], "running": self.running, "count": self.count,
                         "val_loss": self.val_loss, "seconds": seconds,
                         "data_wait": self.data_wait_before + self.data_wait},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict`` (already matched to ``identity`` by ``resume.load_resume``)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], self.rng, self.noise_gen, self.world.device)
        self.step = int(state["step"])
        progress = state["progress"]
        self.log_rows = [tuple(r) for r in progress["rows"]]
        self.running, self.count = float(progress["running"]), int(progress["count"])
        self.val_loss, self.seconds_before = float(progress["val_loss"]), float(progress["seconds"])
        self.data_wait_before = float(progress["data_wait"])

    def next_patches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This worker's rows of the current step's batch, from the loader (started at the current step)."""
        if self.batches is None:
            pin = self.world.device.type == "cuda"
            self.batches = batch_loader(self.sampler, range(self.rows.start, self.rows.stop), self.step,
                                        self.steps, self.run.workers(self.world.device), pin)
        start = time.perf_counter()
        patches = next(self.batches)
        self.data_wait += time.perf_counter() - start
        return patches

    def close(self) -> None:
        """Stop the loader's worker processes."""
        self.batches = None

    def train_step(self) -> tuple[float, float]:
        """One optimiser step on this worker's rows of the next global batch.

        Returns the learning rate and this worker's share of the batch's mean loss.
        """
        dev, batch, rows = self.world.device, self.batch, self.rows
        lr = lr_at(self.step, self.settings.lr, self.settings.warmup_steps, self.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cond, volume = (x.to(dev, non_blocking=True) for x in self.next_patches())
        t = torch.from_numpy(self.draw_t(batch)[rows]).long().to(dev)
        noise = torch.randn((batch, 1, *cond.shape[2:]), generator=self.noise_gen)[rows].to(dev)
        self.model.train()
        with autocast(dev):
            loss = self.loss(self.net, cond, volume, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (self.share * self.world.size)).backward()  # DDP averages over workers: the batch mean
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        decay = self.settings.ema_decay
        ema_update(self.ema, self.model, min(decay, (1.0 + self.step) / (10.0 + self.step)))
        self.step += 1
        return lr, float(loss.detach()) * self.share

    def draw_t(self, batch: int) -> np.ndarray:
        """A global batch's timesteps: uniform over 0..T-1 (eq. 14), a ``t_end_fraction`` share of rows moved to
        t = T-1 (the end the posterior-mean estimate reads). The extra draw happens only when the share is set, so
        the default stream is the uniform one."""
        T = self.schedule.num_timesteps
        t = self.rng.integers(0, T, size=batch)
        share = self.settings.t_end_fraction
        if share > 0:
            t[self.rng.random(batch) < share] = T - 1
        return t

    def loss(self, net: torch.nn.Module, cond: torch.Tensor, volume: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """The objective's loss on a batch: the predictor's pixel loss, the diffusion loss, or the regression
        baseline's (``t``, ``noise`` unused but by the diffusion loss)."""
        if self.predictor:
            return predictor_loss(net, cond, volume, self.settings.loss)
        if self.regression:
            return regression_loss(net, self.param, cond, volume)
        return diffusion_loss(net, self.schedule, self.param, cond, volume, t, noise)

    def validate(self) -> float:
        """The EMA network's loss on the fixed validation batch (the main worker only)."""
        v, dev = self.val, self.world.device
        with torch.no_grad(), autocast(dev):
            return float(self.loss(self.ema, v.cond.to(dev), v.target.to(dev), v.t.to(dev), v.noise.to(dev)))

    def record(self, batch_loss: float, lr: float, elapsed: Callable[[], float], log: Callable[[str], None]) -> None:
        """Add a step's loss to the running mean; at a validation step, validate and log a row."""
        self.running += batch_loss
        self.count += 1
        if self.step % self.settings.val_every and self.step != self.steps:
            return
        if self.world.is_main:
            self.val_loss = self.validate()
        train_loss, seconds = self.running / self.count, elapsed()
        self.log_rows.append((self.step, train_loss, self.val_loss, lr, seconds, peak_rss_mb(),
                              self.data_wait_before + self.data_wait))
        wait = self.data_wait_before + self.data_wait
        waited = f"  waited for data {100 * wait / seconds:.0f}%" if seconds > 0 else ""
        log(f"step {self.step}/{self.steps}  train {train_loss:.5f}  val {self.val_loss:.5f}  lr {lr:.2e}  "
            f"{seconds:.0f}s{waited}")
        self.running, self.count = 0.0, 0

    def final_checkpoint(self, seconds: float, log: Callable[[str], None]) -> dict:
        """The stage checkpoint: weights, config, and the EMA network's x0 error by timestep
        on the validation patches (for ``sampling.variance: analytic``)."""
        final = self.state_dict(seconds)
        del final["progress"], final["data"]
        final.update(format=1, train_seconds=seconds, network=self.run.network)
        if self.predictor or self.regression:  # one pass, no reverse process: no x0 error by timestep to measure
            return final
        if self.run.predictor is not None:  # the stage's predictor travels inside its checkpoint
            final["predictor"] = load_predictor_payload(self.run.predictor)
        grid = analytic.error_grid(self.schedule)
        v, dev = self.val, self.world.device
        with autocast(dev):
            mse = analytic.measure_x0_error(self.ema, self.schedule, self.param, v.cond.to(dev), v.target.to(dev),
                                            v.noise.to(dev), grid)
        final["x0_mse"] = {"t": grid, "mse": mse}
        log(f"stage {self.run.stage}: x0 error by t on {len(v.t)} val patches: "
            + ", ".join(f"t={t} {m:.2e}" for t, m in list(zip(grid, mse))[:: max(1, len(grid) // 5)]))
        return final

    def write_log(self, path: str | Path) -> None:
        """The loss log, one row per validation step (LOG_COLUMNS): the parameter count on every row, and
        so far the process's peak resident size and the seconds it waited for patches."""
        rows = [(f"{s}", f"{tr:.6g}", f"{va:.6g}", f"{lr:.6g}", f"{sec:.2f}", f"{self.n_params}", f"{rss:.0f}",
                 f"{wait:.2f}") for s, tr, va, lr, sec, rss, wait in self.log_rows]
        with atomic_path(path) as tmp:
            write_tsv(tmp, LOG_COLUMNS, rows)


def sources(volumes: Sequence[PatchSource | StagePair]) -> list[PatchSource]:
    """Training volumes as patch sources: cached volumes as they are, in-memory pairs wrapped."""
    return [MemoryVolume(v) if isinstance(v, StagePair) else v for v in volumes]


def train_stage(
    train: Sequence[PatchSource | StagePair],
    val: Sequence[PatchSource | StagePair],
    run: StageRun,
    *,
    world: World | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
    stop: StopSignals | None = None,
) -> TrainResult:
    """Train the U-Net of one cascade stage and write its checkpoint and loss log.

    ``train`` and ``val`` are the stage's volumes: cached on disk
    (``training.cache.CachedVolume``) or in memory (``StagePair``).

    Training resumes from ``run.resume_path`` when that file belongs to this
    stage, config and data; it writes that file every ``run.checkpoint_every``
    steps and when SIGTERM, SIGUSR1 or SIGINT arrives, then raises
    ``TrainingInterrupted`` (``mrisr.resume``). Signals are caught by ``stop``
    if given (a caller that has more to do after training holds it for its
    whole run), else while this function runs. ``world`` places this process
    among DDP workers (``mrisr.distributed``); by default training runs in this
    process alone on the config's ``device``. ``on_step(n)`` is called after
    the n-th step.
    """
    if world is None:
        world = World(device=pick_device(run.config.get("device", "auto")))
    loop = TrainLoop(train, val, run, world)
    workers = f" x {world.size} workers" if world.size > 1 else ""
    what = "predictor" if run.network == "predictor" else "diffusion U-Net"
    log(f"stage {run.stage}: {what} with {loop.n_params:,} parameters on {world.device}{workers}; "
        f"{len(train)} train, {len(val)} val volumes; {run.workers(world.device)} loader process(es)")
    if stop is not None:
        return _run(loop, log, on_step, stop)
    with StopSignals() as own:
        return _run(loop, log, on_step, own)


def _run(loop: TrainLoop, log: Callable[[str], None], on_step: Callable[[int], None] | None,
         stop: StopSignals) -> TrainResult:
    """Resume if possible, step to the end (checkpointing and stopping as asked), write the outputs."""
    run, world = loop.run, loop.world
    state = load_resume(run.resume_path, loop.identity(), log)
    if state is not None:
        loop.load_state_dict(state)
        log(f"resumed from step {loop.step} of {loop.steps} ({run.resume_path})")
    start = time.perf_counter()
    elapsed = lambda: loop.seconds_before + time.perf_counter() - start  # noqa: E731
    Path(run.log_tsv).parent.mkdir(parents=True, exist_ok=True)
    try:
        while loop.step < loop.steps:
            lr, loss_share = loop.train_step()
            if on_step is not None:
                on_step(loop.step)
            batch_loss, stops = world.sum([loss_share, float(stop.requested)])
            loop.record(batch_loss, lr, elapsed, log)
            every = run.checkpoint_every
            if loop.step < loop.steps and (stops > 0 or (every and loop.step % every == 0)):
                if world.is_main:
                    save_checkpoint(run.resume_path, loop.state_dict(elapsed()))
                world.barrier()  # no worker leaves before the checkpoint is on disk
                if stops > 0:
                    raise TrainingInterrupted(loop.step, run.resume_path, stop.received or "a signal to another worker")
    finally:
        loop.close()
    seconds = elapsed()
    if world.is_main:
        save_checkpoint(run.checkpoint, loop.final_checkpoint(seconds, log))
        loop.write_log(run.log_tsv)
        run.resume_path.unlink(missing_ok=True)
    world.barrier()
    last = loop.log_rows[-1][1] if loop.log_rows else float("nan")
    return TrainResult(loop.steps, last, loop.val_loss, seconds, loop.data_wait_before + loop.data_wait)
