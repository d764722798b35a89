"""GPU check: what config/hcp_gpu.yaml's network costs on the GPU it runs on.

One short script for a lent GPU (and, with ``--smoke``, a tiny version that
runs anywhere in seconds: the test suite runs it on the CPU). It measures,
with the real training loop and the real sliding-window inference:

1. **Training.** ``TrainLoop.train_step`` (the DDPM loss, bf16 autocast on
   CUDA, AdamW, EMA) of the config's U-Net on the config's batch and patch,
   drawing patches from synthetic full-size subjects (0.7 mm HCP after
   ``skullstrip``'s crop: 220 x 272 x 230): seconds per step (median of timed
   steps after warm-up, the GPU synchronised), of which drawing the patches
   takes how much, peak GPU memory, and the hours ``train.steps`` would take.
2. **bf16 against float32.** The relative L2 difference of the network's
   output under bf16 autocast and in float32 on the same input.
3. **Inference memory curve.** One network evaluation (no gradient, bf16
   autocast) of patch sides 64, 96, ... at batch 1 and 2: peak GPU memory and
   seconds. From the curve: the largest patch side that fits 40 GB and 80 GB
   cards (measured points only, 10 % headroom).
4. **Whole volume.** One network pass over a full-size volume through
   ``sliding_window`` with the config's sampling patch, overlap and batch,
   and the time of ``super_resolve``'s passes per volume
   (``sampling.steps_run`` x ``n_samples``); then ``super_resolve_stage``
   itself on a full-size LR: the posterior-mean estimate of one sample (one
   pass) and one DDIM sample of the config's steps, timed whole.

The training patches come from stage caches on disk (``training.cache``)
through the loader's worker processes (``train.loader_workers``' default), and
the check reports the share of the training time spent waiting for them.

Writes one TSV (``--out``, default benchmarks/results/gpu_check.tsv) with
rows (section, measure, value, unit) and the device's name.

    bash benchmarks/gpu_check.sh               # on a GPU node, the full check
    bash benchmarks/gpu_check.sh --smoke       # anywhere, seconds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mrisr.config import SamplingOptions, section, section_defaults  # noqa: E402
from mrisr.device import autocast, pick_device  # noqa: E402
from mrisr.diffusion.cascade import StagePair  # noqa: E402
from mrisr.diffusion.sampler import sliding_window  # noqa: E402
from mrisr.diffusion.parameterization import Parameterization  # noqa: E402
from mrisr.distributed import World  # noqa: E402
from mrisr.inference import Stage, super_resolve_stage  # noqa: E402
from mrisr.diffusion.predictor import predictor_from_config  # noqa: E402
from mrisr.training.cache import CachedVolume, write_prediction, write_stage_cache  # noqa: E402
from mrisr.training.loop import StageRun, TrainLoop  # noqa: E402

HCP_CROPPED = (220, 272, 230)  # a 0.7 mm HCP T1w after skullstrip's crop (issue 13)
SECTIONS = ("cascade", "degrade", "diffusion", "model", "train", "sampling")
SMOKE = {"model": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention": True,
                   "num_heads": 2},
         "train": {"batch_size": 2, "patch_size": 16, "val_patches": 2, "steps": 10},
         "sampling": {"patch_size": 16, "batch_size": 2, "steps": 2, "n_samples": 2}}
GB = 1024 ** 3


class Rows(list):
    """The check's rows (section, measure, value, unit), printed and written to ``path`` as each section ends,
    so that a check stopped at its time limit keeps what it measured."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.printed = path, 0

    def flush(self) -> None:
        for row in self[self.printed:]:
            print("\t".join(map(str, row)), flush=True)
        self.printed = len(self)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("section\tmeasure\tvalue\tunit\n" + "".join("\t".join(map(str, r)) + "\n" for r in self))


def merged_config(files: list[Path], smoke: bool) -> dict:
    """The sections training and sampling use: schema defaults, then each file in turn (as Snakemake merges)."""
    config = {name: section_defaults(name) for name in SECTIONS}
    for path in files:
        loaded = yaml.safe_load(path.read_text()) or {}
        for name in SECTIONS:
            config[name].update(loaded.get(name, {}))
    if smoke:
        for name, values in SMOKE.items():
            config[name].update(values)
    config["device"] = "auto"
    return config


class Sync:
    """Wall-clock timing that waits for the GPU's queued work."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        return torch.cuda.max_memory_allocated() / GB if self.cuda else float("nan")


def synthetic_pair(shape: tuple[int, ...], seed: int) -> StagePair:
    """A stand-in subject of the given size: a smooth target, its noisy condition, an ellipsoid brain mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    radius = sum(g * g for g in grids)
    target = np.clip(1.0 - radius, 0, 1).astype(np.float32)
    cond = (target + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return StagePair(cond=cond, target=target, mask=radius < 0.8, pred=cond)  # pred: g's stand-in (same cost)


def median_seconds(fn: Callable[[], object], sync: Sync, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = sync.now()
        fn()
        times.append(sync.now() - start)
    return statistics.median(times)


def check_training(config: dict, volume: tuple[int, ...], device: torch.device, rows: Rows, smoke: bool,
                   caches: Path) -> TrainLoop:
    sync = Sync(device)
    refine = Parameterization.from_diffusion(config["diffusion"]).cond_channels == 2  # predict, then refine
    for k in range(2):
        pair = synthetic_pair(volume, k)
        write_stage_cache(pair, caches / f"s{k}", [1.4] * 3)
        if refine:
            write_prediction(caches / f"s{k}", pair.pred)
    volumes = [CachedVolume(caches / f"s{k}", prediction=refine) for k in range(2)]
    run = StageRun(config=config, stage=0, checkpoint="unused.pt", log_tsv="unused.tsv")
    loop = TrainLoop(volumes[:1], volumes[1:], run, World(device=device))
    tcfg = config["train"]
    sync.reset_peak()
    for _ in range(2 if smoke else 5):  # warm-up: kernels chosen, loader workers started
        loop.train_step()
    repeats = 3 if smoke else 40
    waited, start = loop.data_wait, sync.now()
    times = []
    for _ in range(repeats):
        t0 = sync.now()
        loop.train_step()
        times.append(sync.now() - t0)
    step, total = statistics.median(times), sync.now() - start
    wait_share = (loop.data_wait - waited) / total
    draw = median_seconds(lambda: loop.sampler.batch(loop.step, range(loop.batch)), sync, repeats=3 if smoke else 20,
                          warmup=1)
    steps = int(tcfg["steps"])
    rows += [
        ("train", "parameters", loop.n_params, "count"),
        ("train", "batch x patch", f"{loop.batch} x {loop.patch}^3", "-"),
        ("train", "seconds_per_step", f"{step:.4f}", "s"),
        ("train", "patch_draw_per_step", f"{draw:.4f}", "s (numpy, in the step above)"),
        ("train", "peak_gpu_memory", f"{sync.peak_gb():.2f}", "GiB"),
        ("train", "loader_workers", run.workers(device), "processes"),
        ("train", "share_of_time_waiting_for_patches", f"{100 * wait_share:.1f}", "%"),
        ("train", f"hours_for_{steps}_steps", f"{step * steps / 3600:.2f}", "h"),
    ]
    return loop


def check_bf16(model: torch.nn.Module, patch: int, device: torch.device, rows: Rows) -> None:
    gen = torch.Generator().manual_seed(0)
    channels = model.stem.in_channels - 1 if hasattr(model, "stem") else 1  # the condition's channels
    x, cond = (torch.randn(1, c, patch, patch, patch, generator=gen).to(device) for c in (1, channels))
    t = torch.tensor([500], device=device)
    with torch.no_grad():
        full = model(x, cond, t).float()
        with autocast(device):
            half = model(x, cond, t).float()
    rel = float((half - full).norm() / full.norm().clamp_min(1e-12))
    rows.append(("bf16", "relative_l2_vs_float32", f"{rel:.2e}", "-"))


def forward_cost(model: torch.nn.Module, patch: int, batch: int, device: torch.device, smoke: bool) -> tuple[float, float]:
    """Seconds and peak GiB of one no-grad network evaluation on (batch, patch^3)."""
    sync = Sync(device)
    x = torch.zeros(batch, 1, patch, patch, patch, device=device)
    cond = torch.zeros(batch, model.stem.in_channels - 1 if hasattr(model, "stem") else 1, patch, patch, patch,
                       device=device)
    t = torch.full((batch,), 500, device=device)

    def once() -> None:
        with torch.no_grad(), autocast(device):
            model(x, cond, t)

    sync.reset_peak()
    seconds = median_seconds(once, sync, repeats=1 if smoke else 3, warmup=1)
    return seconds, sync.peak_gb()


def check_inference_curve(model: torch.nn.Module, sides: list[int], device: torch.device, rows: Rows,
                          smoke: bool) -> None:
    fits: dict[tuple[int, int], int] = {}
    for batch in (1, 2):
        for side in sides:
            try:
                seconds, peak = forward_cost(model, side, batch, device, smoke)
            except torch.cuda.OutOfMemoryError:
                rows.append(("inference", f"patch_{side}_batch_{batch}", "out of memory", "-"))
                torch.cuda.empty_cache()
                break
            rows.append(("inference", f"patch_{side}_batch_{batch}_seconds", f"{seconds:.4f}", "s"))
            rows.append(("inference", f"patch_{side}_batch_{batch}_peak", f"{peak:.2f}", "GiB"))
            rows.flush()
            for card in (40, 80):
                if peak <= 0.9 * card * 1e9 / GB:
                    fits[card, batch] = side
    for (card, batch), side in sorted(fits.items()):
        rows.append(("inference", f"largest_measured_patch_{card}GB_batch_{batch}", side, "voxels per side"))


def check_whole_volume(model: torch.nn.Module, config: dict, volume: tuple[int, ...], device: torch.device,
                       rows: Rows) -> None:
    options = SamplingOptions.from_mapping(config["sampling"])
    sync = Sync(device)
    cond_channels = Parameterization.from_diffusion(config["diffusion"]).cond_channels
    inputs = torch.zeros(1, 1 + cond_channels, *volume, device=device)
    t = torch.full((options.batch_size,), 500, device=device)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            return model(batch[:, :1], batch[:, 1:], t[: batch.shape[0]])

    sync.reset_peak()
    with torch.no_grad():
        seconds = median_seconds(lambda: sliding_window(predict, inputs, options.patch_size, options.overlap,
                                                        options.batch_size), sync, repeats=1, warmup=1)
    passes = options.steps_run * options.n_samples
    rows += [
        ("volume", "shape", "x".join(map(str, volume)), "voxels"),
        ("volume", f"one_pass_patch_{options.patch_size}_batch_{options.batch_size}", f"{seconds:.2f}", "s"),
        ("volume", "peak_gpu_memory", f"{sync.peak_gb():.2f}", "GiB"),
        ("volume", f"passes_per_volume ({options.steps_run} steps x {options.n_samples} samples)", passes, "count"),
        ("volume", "minutes_per_volume", f"{seconds * passes / 60:.1f}", "min"),
    ]


def check_sampling(model: torch.nn.Module, config: dict, volume: tuple[int, ...], device: torch.device,
                   rows: Rows) -> None:
    """``super_resolve_stage`` on a full-size LR: a posterior-mean estimate (one pass), one DDIM sample."""
    factor = int(config["cascade"]["factors"][0])
    param = Parameterization.from_diffusion(config["diffusion"])
    predictor = (predictor_from_config(section("predictor", config.get("predictor", {})), factor).to(device).eval()
                 if param.cond_channels == 2 else None)
    stage = Stage(model=model, config=config, stage=0, factor=(factor,) * 3, path=Path("untrained"), param=param,
                  predictor=predictor)  # an untrained predictor costs what a trained one does
    lr = synthetic_pair(tuple(n // factor for n in volume), 0).target
    base = SamplingOptions.from_mapping(config["sampling"])
    sync = Sync(device)
    for name, options in (("posterior_mean_1_sample", base.with_values(n_samples=1, estimate="posterior_mean")),
                          (f"ddim_{base.steps}_steps_1_sample", base.with_values(n_samples=1, estimate="sample_mean"))):
        sync.reset_peak()
        start = sync.now()
        super_resolve_stage(stage, lr, options, torch.Generator(device="cpu").manual_seed(0))
        rows += [("sampling", f"{name}_seconds", f"{sync.now() - start:.1f}", "s"),
                 ("sampling", f"{name}_peak_gpu_memory", f"{sync.peak_gb():.2f}", "GiB")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny network and volumes: seconds, on any device")
    parser.add_argument("--config", type=Path, nargs="+",
                        default=[ROOT / "config/config.yaml", ROOT / "config/hcp_gpu.yaml"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.tsv")
    args = parser.parse_args(argv)
    config = merged_config(args.config, args.smoke)
    device = pick_device("auto")
    volume = (24, 28, 20) if args.smoke else HCP_CROPPED
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = Rows(args.out)
    rows += [("device", "name", name, "-"), ("device", "torch", torch.__version__, "-")]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as caches:
        loop = check_training(config, volume, device, rows, args.smoke, Path(caches))
        rows.flush()
        model = copy.deepcopy(loop.ema).eval()
        loop.close()  # the loader's workers end before their caches go
        del loop
    check_bf16(model, int(config["train"]["patch_size"]), device, rows)
    check_whole_volume(model, config, volume, device, rows)
    rows.flush()
    check_sampling(model, config, volume, device, rows)
    rows.flush()
    sides = [16, 24] if args.smoke else [64, 96, 128, 160, 192, 224, 256, 288, 320]
    check_inference_curve(model, sides, device, rows, args.smoke)
    rows.flush()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
