"""One ``train_stage`` job of the workflow: its stage caches, opened as training data, and trained.

A ``TrainJob`` holds plain values only (paths, the config, the stage), so the
job's process hands it to DDP workers as JSON (``to_json`` / ``from_json``)
and every worker runs ``run_job`` on it: the same function as a
single-process job, with its place among the workers (``World``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from mrisr.data.splits import read_splits
from mrisr.distributed import World
from mrisr.resume import StopSignals
from mrisr.training.cache import CachedVolume, read_cache_info
from mrisr.training.loop import StageRun, TrainResult, train_stage

log = logging.getLogger("mrisr")


@dataclass(frozen=True)
class TrainJob:
    """A stage to train (``run``) on the subjects of a split file, from their stage caches.

    ``caches`` maps each train and val subject to its cache directory
    (``training.cache.write_stage_cache``: the workflow's ``cache_stage`` rule).
    """

    run: StageRun
    splits: str
    caches: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainJob":
        values = json.loads(text)
        return cls(**{**values, "run": StageRun(**values["run"])})

    @property
    def reads_prediction(self) -> bool:
        """Whether the run trains on the stage predictor's output (a predict-and-refine diffusion model)."""
        from mrisr.diffusion.parameterization import Parameterization

        param = Parameterization.from_diffusion(self.run.config["diffusion"])
        return self.run.network == "diffusion" and param.target == "predictor_residual"

    def subjects(self, split: str) -> list[str]:
        """The job's subjects in ``split`` (train or val), sorted."""
        return sorted(s for s, v in read_splits(self.splits).items() if v == split)

    def volumes(self, split: str) -> list[CachedVolume]:
        """The stage's cached condition, target and mask of every subject in ``split``, opened, not read."""
        missing = [s for s in self.subjects(split) if s not in self.caches]
        if missing:
            raise ValueError(f"{self.splits}: {split} subject(s) {', '.join(missing)} have no stage cache")
        return [CachedVolume(self.caches[s], prediction=self.reads_prediction) for s in self.subjects(split)]

    def with_training_data(self) -> "TrainJob":
        """The job with what its training data were in its config (``data``): the training LR's voxel size
        (``lr_voxel_size_mm``) and the median over the training subjects of their LR's tissue level
        (``lr_brain_median``, where their caches record one: ``protocol.lr_tissue_level``), so that they travel
        with the checkpoint and ``mrisr super-resolve`` can warn about scans of another resolution or
        intensity level."""
        infos = [read_cache_info(self.caches[s]) for s in self.subjects("train")]
        data: dict = {"lr_voxel_size_mm": list(infos[0].lr_voxel_size_mm)}
        levels = [i.lr_tissue_level for i in infos if i.lr_tissue_level is not None]
        if levels:
            data["lr_brain_median"] = round(float(np.median(levels)), 6)
        return replace(self, run=replace(self.run, config={**self.run.config, "data": data}))


def run_job(job: TrainJob, stop: StopSignals, world: World | None = None) -> TrainResult:
    """Open the job's stage caches and train its stage (``train_stage``); ``stop`` holds the stop signals."""
    job = job.with_training_data()
    result = train_stage(job.volumes("train"), job.volumes("val"), job.run, world=world, log=log.info, stop=stop)
    if world is None or world.is_main:
        log.info("stage %d trained: %d steps in %.0f s, val loss %.5f",
                 job.run.stage, result.steps, result.seconds, result.final_val_loss)
    return result

