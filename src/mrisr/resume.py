"""Resuming training where it stopped: the resume checkpoint and the signals that ask for one.

A cluster stops a job with a signal: Slurm sends SIGTERM to every process of a
job at its time limit (and, with ``sbatch --signal=TERM@<seconds>``, that many
seconds earlier) and before it pre-empts or requeues the job; a user's Ctrl-C
is SIGINT. ``StopSignals`` turns the first of these into a flag that the
training loop reads after every step; the loop then writes the resume
checkpoint and raises ``TrainingInterrupted``. Training also writes the resume
checkpoint every ``checkpoint_every`` steps, so a SIGKILL loses at most that
many steps.

The resume checkpoint holds everything a step depends on: model, EMA and
optimiser states, the step, the states of every random stream (the numpy
Generator that draws patches and timesteps, the torch Generator that draws the
noise, torch's global generators used by dropout) and the loss log so far.
Resuming therefore continues exactly the run that was interrupted: the final
model does not depend on how often training stopped. It lives beside the
final checkpoint (``resume.pt`` in the stage's folder), which is not one of the
rule's declared outputs, so Snakemake does not delete it before a retried job
starts; training deletes it once the final checkpoint is written.

Everything is stored as tensors, plain ints, floats, strings, lists and dicts,
so the file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Callable, Mapping, Sequence

import numpy as np
import torch


RESUME_FORMAT = 2  # 2: patches drawn per (seed, step, row), data fingerprinted by volume digests
RESUME_NAME = "resume.pt"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a resume checkpoint; running it again continues."""

    def __init__(self, step: int | None, path: str | Path, signal_name: str) -> None:
        after = f" after step {step}" if step is not None else ""
        super().__init__(f"training stopped by {signal_name}{after}; "
                         f"resume checkpoint {path}; run the job again to continue")
        self.step = step
        self.path = Path(path)
        self.signal_name = signal_name


def default_resume_path(checkpoint_path: str | Path) -> Path:
    """Where a stage's resume checkpoint lives: beside its final checkpoint."""
    return Path(checkpoint_path).with_name(RESUME_NAME)


class StopSignals:
    """Context manager: SIGTERM, SIGUSR1 and SIGINT set ``received`` instead of killing the process.

    A second SIGINT raises ``KeyboardInterrupt`` at once (a way out when a step
    hangs). Outside the main thread signal handlers cannot be installed and
    the context does nothing. Previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def rng_state(
    numpy_rng: np.random.Generator, noise_gen: torch.Generator, device: torch.device
) -> dict:
    """The states of every random stream of a training step, as plain values and tensors."""
    state = {
        "numpy": dict(numpy_rng.bit_generator.state),  # str and int only (PCG64's 128-bit ints)
        "noise": noise_gen.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(
    state: Mapping, numpy_rng: np.random.Generator, noise_gen: torch.Generator, device: torch.device
) -> None:
    """Restore what ``rng_state`` captured."""
    numpy_rng.bit_generator.state = dict(state["numpy"])
    noise_gen.set_state(state["noise"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def data_fingerprint(digests: Sequence[str]) -> str:
    """A short hash of the training data (its volumes' digests, ``training.cache.volume_digest``),
    so a resume checkpoint is never applied to other data."""
    return hashlib.blake2b("\n".join(digests).encode(), digest_size=16).hexdigest()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def load_resume(path: str | Path, expected: Mapping, log: Callable[[str], None]) -> dict | None:
    """The resume checkpoint at ``path`` if it exists and belongs to this run, else None.

    ``expected`` holds the values the checkpoint must match (``format``,
    ``stage``, ``config``, ``data``); a mismatch or an unreadable file is
    logged and ignored: training then starts from step 0 and overwrites it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        log(f"{path}: unreadable resume checkpoint ({type(err).__name__}: {err}); starting from step 0")
        return None
    for key, value in expected.items():
        if _canonical(payload.get(key)) != _canonical(value):
            log(f"{path}: resume checkpoint is for another {key}; starting from step 0")
            return None
    return payload
