"""Shared by the thin Snakemake scripts: logging to the rule's log, threads, errors.

Snakemake puts a local script's folder on ``sys.path``, so every script can
``from _adapter import run_stage``. Importing this module puts this checkout's
``src/`` on ``sys.path`` (also inside a conda env that does not install
mrisr); ``workflow/rules/common.smk`` imports it too, so the workflow and its
jobs run the same code, and this is the one place that knows where it is. A
script imports the ``mrisr.pipeline`` function it runs and hands it to
``run_stage`` with plain arguments:
``run_stage`` sends logging to the rule's ``log:`` file, caps torch's threads
at the job's ``threads`` and calls it. An exception is written to the log
with its traceback and fails the job, except bad input (``io.InputError``: a
scan, mask or checkpoint that cannot be used), which is logged as the
``mrisr`` command prints it, one line ``mrisr: error: <file>: <problem>``;
training stopped by a signal after saving its resume checkpoint fails it
with exit status 75 and one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # at import, so scripts can import mrisr after importing this
    sys.path.insert(0, str(SRC))


def run_stage(snakemake: Any, function: Callable[..., None], **kwargs: Any) -> None:
    threads = max(1, int(snakemake.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0], mode="w")],
        force=True,
    )
    from mrisr.io import InputError
    from mrisr.resume import TrainingInterrupted

    try:
        import torch

        torch.set_num_threads(threads)
        function(**kwargs)
    except TrainingInterrupted as err:  # saved and stopped: the job's next attempt continues
        logging.getLogger("mrisr").warning("%s", err)
        sys.exit(75)  # EX_TEMPFAIL
    except InputError as err:  # a file that cannot be used: the CLI's one line, no traceback
        logging.getLogger("mrisr").error("mrisr: error: %s", err)
        sys.exit(1)
    except Exception:
        logging.getLogger("mrisr").exception("%s failed", function.__name__)
        raise
