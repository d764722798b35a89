from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny.yaml"


def snakemake_cmd(workdir: Path, *args: str, config: Path = TINY_CONFIG) -> list[str]:
    """A snakemake call on this repository's workflow, writing into ``workdir``."""
    exe = Path(sys.executable).with_name("snakemake")
    return [
        str(exe if exe.exists() else shutil.which("snakemake")),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config),
        "--cores", "2",
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, config: Path = TINY_CONFIG, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        snakemake_cmd(workdir, *args, config=config), capture_output=True, text=True, timeout=timeout, env=env
    )
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete end-to-end run of the tiny config, shared by the workflow tests."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(workdir)
    return workdir
