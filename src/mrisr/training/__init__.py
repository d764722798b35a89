"""Training the stages of a cascade.

- ``patches``: random training patches centred on brain voxels;
- ``loop``: the DDPM loss, ``TrainLoop`` (the state of one stage's training) and ``train_stage``;
- ``job``: one workflow job, ``TrainJob``: its files read into training data, and ``run_job``;
- ``ddp``: the same job in several torchrun workers (``launch``) and each worker's entry point.
"""

from __future__ import annotations

from mrisr.training.job import TrainJob, run_job
from mrisr.training.loop import LOG_COLUMNS, StageRun, TrainLoop, TrainResult, diffusion_loss, train_stage
from mrisr.training.patches import PatchSampler

__all__ = ["LOG_COLUMNS", "PatchSampler", "StageRun", "TrainJob", "TrainLoop", "TrainResult", "diffusion_loss",
           "run_job", "train_stage"]
