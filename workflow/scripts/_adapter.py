"""Shared by the thin Snakemake scripts: logging to the rule's log, threads, the core package.

Snakemake puts a local script's folder on ``sys.path``, so every script can
``from _adapter import run_stage``. Importing it makes ``src/`` importable
(also inside a conda env that does not install mrisr); ``run_stage`` sends logging to the
rule's ``log:`` file, caps torch's threads at the job's ``threads``, and calls
one ``mrisr.pipeline`` function with plain arguments. An exception is written
to the log with its traceback and fails the job; training stopped by a signal
after saving its resume checkpoint fails it with exit status 75 and one line.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any


SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # at import, so scripts can import mrisr after importing this
    sys.path.insert(0, str(SRC))


def run_stage(snakemake: Any, function: str, **kwargs: Any) -> None:
    threads = max(1, int(snakemake.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0], mode="w")],
        force=True,
    )
    from mrisr.resume import TrainingInterrupted

    try:
        import torch

        torch.set_num_threads(threads)
        pipeline = importlib.import_module("mrisr.pipeline")
        getattr(pipeline, function)(**kwargs)
    except TrainingInterrupted as err:  # saved and stopped: the job's next attempt continues
        logging.getLogger("mrisr").warning("%s", err)
        sys.exit(75)  # EX_TEMPFAIL
    except Exception:
        logging.getLogger("mrisr").exception("%s failed", function)
        raise
