"""Training one stage on several GPUs of one node: torchrun workers and DistributedDataParallel.

``launch`` runs in the job's process: it writes the ``TrainJob`` to a spec
file and starts ``torchrun --standalone`` with ``nproc`` workers, each of
which runs ``python -m mrisr.training.ddp SPEC``: it joins the process group
(``distributed.init_world``) and calls ``job.run_job`` with its ``World``.
How the workers share a batch is explained in ``mrisr.distributed``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from mrisr.distributed import init_world
from mrisr.resume import STOP_SIGNALS, StopSignals, TrainingInterrupted
from mrisr.training.job import TrainJob, run_job

log = logging.getLogger("mrisr")


def launch(job: TrainJob, nproc: int, log_file: str | None, threads: int = 1) -> None:
    """Run ``job`` in ``nproc`` torchrun workers and wait.

    SIGTERM, SIGUSR1 and SIGINT received here are passed to torchrun as
    SIGTERM, which passes them to the workers; they save a resume checkpoint
    and stop, and this raises ``TrainingInterrupted``. Any other failure
    raises ``RuntimeError``. Each worker uses ``threads // nproc`` CPU threads.
    """
    spec = {"job": json.loads(job.to_json()), "log_file": log_file, "threads": max(1, threads // nproc)}
    out_dir = Path(job.run.checkpoint).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(prefix=".train_spec.", suffix=".json", dir=out_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(spec, fh)
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mrisr.training.ddp", spec_path]
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
        if received:
            raise TrainingInterrupted(None, job.run.resume_path, received[0])
        raise RuntimeError(f"torchrun with {nproc} training workers exited with status {code}")


def _configure_logging(rank: int, size: int, device: torch.device, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if rank == 0 and log_file:
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}/{size} {device}] %(message)s",
        handlers=handlers, force=True,
    )


def worker(spec_path: str) -> int:
    """One torchrun worker: join the group, train its share, leave; 75 (EX_TEMPFAIL) when stopped by a signal."""
    spec = json.loads(Path(spec_path).read_text())
    job = TrainJob.from_json(json.dumps(spec["job"]))
    world = init_world(job.run.config.get("device", "auto"))
    torch.set_num_threads(int(spec["threads"]))
    _configure_logging(world.rank, world.size, world.device, spec["log_file"])
    try:
        with StopSignals() as stop:
            run_job(job, stop, world)
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
    sys.exit(worker(sys.argv[1]))
