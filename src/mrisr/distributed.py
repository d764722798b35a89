"""Training on several GPUs of one node: torchrun workers and DistributedDataParallel (DDP).

One process per GPU, started by ``torchrun --standalone`` inside the job
(a Slurm job that asked for N GPUs gets N workers). Every worker runs the same
random streams and draws the same global batch of ``train.batch_size``
patches, then keeps its own contiguous share of rows (``World.rows``); DDP
averages the gradients. Each worker's loss is weighted by its share, so the
averaged gradient is that of the mean loss over the whole batch: the model
does not depend on the number of GPUs beyond floating-point noise (dropout
excepted: its masks come from each worker's own generator), and a run
interrupted on N GPUs can resume on M.

Without CUDA the workers run on the CPU with the gloo backend, which is how the
tests exercise this code. ``launch`` is called by ``mrisr.pipeline.train`` in
the job's process; ``python -m mrisr.distributed SPEC`` is each worker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("mrisr")


def requested_gpus(resources: Mapping[str, object]) -> int:
    """GPUs a job asked for through Snakemake resources (``gpu``/``gpus``/``nvidia_gpu`` or ``gres``)."""
    for key in ("gpu", "gpus", "nvidia_gpu"):
        value = resources.get(key)
        if value not in (None, ""):
            return int(value)
    gres = str(resources.get("gres") or "")
    for item in gres.split(","):
        parts = item.strip().split(":")
        if parts[0] == "gpu":
            return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return 0


@dataclass(frozen=True)
class World:
    """This process's place among the training workers; a single process by default."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This worker's contiguous share of a global batch of ``batch`` rows."""
        return slice(batch * self.rank // self.size, batch * (self.rank + 1) // self.size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to run forward/backward through: DDP across workers, the model itself alone."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all workers (identity for one process)."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun set up (env://); NCCL on CUDA, gloo on the CPU."""
    from mrisr.training import pick_device

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = pick_device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"worker {local_rank} needs GPU {local_rank}, but {count} are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=size)
    return World(rank=rank, size=size, device=dev)


def launch(nproc: int, train_kwargs: Mapping, log_file: str | None, threads: int = 1) -> None:
    """Run ``mrisr.pipeline.train(**train_kwargs)`` in ``nproc`` torchrun workers and wait.

    SIGTERM, SIGUSR1 and SIGINT received here are passed to torchrun as
    SIGTERM, which passes them to the workers; they save a resume checkpoint
    and stop, and this raises ``TrainingInterrupted``. Any other failure
    raises ``RuntimeError``.
    """
    from mrisr.resume import STOP_SIGNALS, TrainingInterrupted, default_resume_path

    spec = {"train": dict(train_kwargs), "log_file": log_file, "threads": max(1, threads // nproc)}
    out_dir = Path(train_kwargs["out_checkpoint"]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(prefix=".train_spec.", suffix=".json", dir=out_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(spec, fh)
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mrisr.distributed", spec_path]
    log.info("starting %d training workers: %s", nproc, " ".join(cmd))
    received: list[str] = []
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        Path(spec_path).unlink(missing_ok=True)
    if code != 0:
        resume = Path(train_kwargs.get("resume_path") or default_resume_path(train_kwargs["out_checkpoint"]))
        if received:
            raise TrainingInterrupted(None, resume, received[0])
        raise RuntimeError(f"torchrun with {nproc} training workers exited with status {code}")


def _worker(spec_path: str) -> int:
    from mrisr.pipeline import train
    from mrisr.resume import TrainingInterrupted

    spec = json.loads(Path(spec_path).read_text())
    world = init_world(spec["train"]["config"].get("device", "auto"))
    torch.set_num_threads(int(spec["threads"]))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if world.is_main and spec["log_file"]:
        handlers.append(logging.FileHandler(spec["log_file"], mode="a"))
    logging.basicConfig(
        level=logging.INFO if world.is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {world.rank}/{world.size} {world.device}] %(message)s",
        handlers=handlers, force=True,
    )
    try:
        train(**spec["train"], world=world)
    except TrainingInterrupted as err:
        log.warning("%s", err)
        return 75  # EX_TEMPFAIL: try again
    except Exception:
        log.exception("training worker %d failed", world.rank)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
