"""Shared by the thin Snakemake scripts: logging to the rule's log, threads, the core package.

Snakemake puts a local script's folder on ``sys.path``, so every script can
``from _adapter import run_stage``. ``run_stage`` makes ``src/`` importable
(also inside a conda env that does not install mrisr), sends logging to the
rule's ``log:`` file, caps torch's threads at the job's ``threads``, and calls
one ``mrisr.pipeline`` function with plain arguments. An exception is written
to the log with its traceback and fails the job.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any


def run_stage(snakemake: Any, function: str, **kwargs: Any) -> None:
    src = Path(snakemake.scriptdir).resolve().parents[1] / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    threads = max(1, int(snakemake.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0], mode="w")],
        force=True,
    )
    try:
        import torch

        torch.set_num_threads(threads)
        pipeline = importlib.import_module("mrisr.pipeline")
        getattr(pipeline, function)(**kwargs)
    except Exception:
        logging.getLogger("mrisr").exception("%s failed", function)
        raise
