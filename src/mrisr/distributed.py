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
tests exercise this code. The workers are started by
``mrisr.training.ddp.launch``; this module is what they share with a
single-process run: ``World``, a process's place among them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

from mrisr.device import pick_device


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
