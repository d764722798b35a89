"""Shared by the thin Snakemake scripts: logging to the rule's log, threads, errors.

Snakemake puts a local script's folder on ``sys.path``, so every script can
``from _adapter import run_stage``. Importing this module puts this checkout's
``src/`` on ``sys.path`` (also inside a conda env that does not install
mrisr); ``workflow/rules/common.smk`` imports it too, so the workflow and its
jobs run the same code, and this is the one place that knows where it is. A
script imports the ``mrisr.pipeline`` function it runs and hands it to
``run_stage`` with plain arguments:
``run_stage`` sends logging to the rule's ``log:`` file, caps torch's threads
at the job's ``threads`` (through ``OMP_NUM_THREADS`` for a job that imports
torch later, so that the jobs that never need it, fetch, split, skull
stripping, do not spend a second or two importing it) and calls it. An exception is written to the log
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
    os.environ["OMP_NUM_THREADS"] = str(threads)  # what torch takes when a job imports it
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0], mode="w")],
        force=True,
    )
    from mrisr.io import InputError

    try:
        if "torch" in sys.modules:  # already imported by the script: set its threads now
            sys.modules["torch"].set_num_threads(threads)
        function(**kwargs)
    except InputError as err:  # a file that cannot be used: the CLI's one line, no traceback
        logging.getLogger("mrisr").error("mrisr: error: %s", err)
        sys.exit(1)
    except Exception as err:
        resume = sys.modules.get("mrisr.resume")  # only a job that trains imports it, and can be interrupted
        if resume is not None and isinstance(err, resume.TrainingInterrupted):  # saved and stopped: run it again
            logging.getLogger("mrisr").warning("%s", err)
            sys.exit(75)  # EX_TEMPFAIL
        logging.getLogger("mrisr").exception("%s failed", function.__name__)
        raise
