"""Training the stages of a cascade.

- ``cache``: a stage's training volumes on disk (``write_stage_cache``), read a patch at a time (``CachedVolume``);
- ``patches``: random training patches centred on brain voxels, and the loader that makes them ahead;
- ``loop``: the DDPM loss, ``TrainLoop`` (the state of one stage's training) and ``train_stage``;
- ``job``: one workflow job, ``TrainJob``: its stage caches opened as training data, and ``run_job``;
- ``ddp``: the same job in several torchrun workers (``launch``) and each worker's entry point.
"""

from __future__ import annotations

from mrisr.training.cache import CachedVolume, MemoryVolume, write_stage_cache
from mrisr.training.job import TrainJob, run_job
from mrisr.training.loop import LOG_COLUMNS, StageRun, TrainLoop, TrainResult, diffusion_loss, train_stage
from mrisr.training.patches import PatchSampler

__all__ = ["LOG_COLUMNS", "CachedVolume", "MemoryVolume", "PatchSampler", "StageRun", "TrainJob", "TrainLoop", "TrainResult", "diffusion_loss",
           "run_job", "train_stage", "write_stage_cache"]
