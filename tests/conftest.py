from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def run_snakemake(
    workdir: Path, *args: str, config: Path = TINY_CONFIG, timeout: int = 900,
    env: dict[str, str] | None = None, check: bool = True,
) -> subprocess.CompletedProcess:
    """Run snakemake; ``env`` replaces the environment (default: this one), ``check`` raises on failure."""
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        snakemake_cmd(workdir, *args, config=config), capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def synthetic_volumes(seed: int, shape=(16, 16, 16)):
    """A seeded volume in [0, 1] that brightens along axis 0, and a box mask inside it."""
    rng = np.random.default_rng(seed)
    hr = np.clip(np.cumsum(rng.random(shape), axis=0) / shape[0], 0, 1).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return hr, mask


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints, as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One complete end-to-end run of the tiny config, shared by the workflow tests."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(workdir)
    return workdir


def isolated_aws_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """This environment without AWS credentials or config files, plus ``variables``.

    Credential files point into ``tmp_path`` (absent unless a test writes
    them) and the EC2 metadata lookup is off, so only what a test sets is found.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws_credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "aws_config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return env | variables


@pytest.fixture
def aws_env(tmp_path, monkeypatch):
    """Make this process's AWS environment ``isolated_aws_env``; returns a setter for more variables."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in isolated_aws_env(tmp_path).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    def set_env(**variables: str) -> None:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    return set_env


@pytest.fixture(scope="session")
def hcp_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with a bucket laid out like HCP (``tests/s3_server.py``); stopped afterwards."""
    import logging

    from s3_server import start_hcp_server, stop_hcp_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    server = start_hcp_server(tmp_path_factory.mktemp("hcp_bucket"))
    yield server
    stop_hcp_server(server)


@pytest.fixture
def faulty_proxy(hcp_server):
    """A loopback proxy in front of ``hcp_server`` that can cut or corrupt responses; closed afterwards."""
    from s3_server import FaultyProxy

    proxy = FaultyProxy(hcp_server.endpoint_url)
    yield proxy
    proxy.close()
