"""The lock files agree with pyproject.toml's bounds, with each other, with the
Makefile and with the conda environments; and `make install` installed them.

requirements/cpu.txt and cuda.txt are pip-compile's (`make lock`); envs/*.yaml
pin mrisr's direct dependencies to the same versions. Reads files only: no network.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO
from mrisr.report import provenance

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

LOCKS = {name: REPO / "requirements" / f"{name}.txt" for name in ("cpu", "cuda")}
# conda-forge's names for what PyPI calls otherwise
CONDA_NAMES = {"pytorch": "torch", "matplotlib-base": "matplotlib", "snakemake-minimal": "snakemake"}


def pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [sha256, ...])} of a pip-compile file with --generate-hashes."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = provenance.LOCK_PIN.match(line)
        if m:
            name = provenance.normalise(m.group(1))
            out[name] = (m.group(2), [])
        elif line.startswith("    --hash=sha256:") and name:
            out[name][1].append(line.split(":", 1)[1].rstrip(" \\"))
        elif line and not line.startswith(" "):
            name = None
    return out


def pyproject_requirements() -> list[Requirement]:
    """mrisr's dependencies and those of the extras the lock files include (test, and slurm through it)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in [*project["dependencies"], *extras["test"], *extras["slurm"]]]
    return [r for r in reqs if r.name != "mrisr"]


def conda_pins(env_file: str) -> dict[str, str]:
    """{PyPI name: spec} of a conda environment file's dependencies, pip's included."""
    deps = yaml.safe_load((REPO / "envs" / env_file).read_text())["dependencies"]
    out = {}
    for dep in deps:
        if isinstance(dep, dict):
            for pip_req in dep["pip"]:
                name, _, version = pip_req.partition("==")
                out[provenance.normalise(name)] = "==" + version
        elif dep != "pip":
            name, _, spec = dep.partition(" ")
            out[CONDA_NAMES.get(name, name)] = spec.replace(" ", "")
    return out


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, tuple[str, list[str]]]]:
    return {name: pins(path) for name, path in LOCKS.items()}


def test_every_locked_package_is_pinned_with_hashes(locks):
    for name, lock in locks.items():
        assert len(lock) > 100, f"{name}: {len(lock)} packages"
        for package, (version, hashes) in lock.items():
            assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (name, package)
        assert "mrisr" not in lock, "the package itself is installed from the checkout"
        text = LOCKS[name].read_text()
        assert "#    make lock\n" in text and "with Python 3.11\n" in text, "the header names the command"
        assert "file:" not in text and "--index-url" not in text, "no local path or index in the file"


def test_the_locks_satisfy_pyproject_bounds(locks):
    for name, lock in locks.items():
        for req in pyproject_requirements():
            assert req.name in lock, f"{name}: {req.name} is not locked"
            version = lock[req.name][0]
            assert req.specifier.contains(version, prereleases=True), f"{name}: {req.name}=={version} vs {req}"


def test_cpu_and_cuda_locks_differ_only_in_the_torch_build(locks):
    cpu, cuda = locks["cpu"], locks["cuda"]
    torch_cpu, torch_cuda = Version(cpu["torch"][0]), Version(cuda["torch"][0])
    assert torch_cpu.local == "cpu" and torch_cuda.local is None and torch_cpu.public == torch_cuda.public
    assert set(cpu) <= set(cuda), "the CUDA build only adds packages"
    added = set(cuda) - set(cpu)
    assert added and all(p.startswith(("nvidia-", "cuda-", "triton")) for p in added), sorted(added)
    assert {p: v for p, (v, _) in cpu.items() if p != "torch"} == {p: cuda[p][0] for p in cpu if p != "torch"}


def test_torch_pins_agree_with_the_inputs_and_the_makefile(locks):
    for name, lock in locks.items():
        inputs = (REPO / "requirements" / f"{name}.in").read_text()
        assert f"\ntorch=={lock['torch'][0]}\n" in inputs, name
    public = Version(locks["cpu"]["torch"][0]).public
    makefile = (REPO / "Makefile").read_text()
    assert f"\nTORCH ?= torch=={public}\n" in makefile, "LOCK=0 installs the locked torch release"
    assert "\nLOCK_PLATFORM := cpython-3.11-Linux-x86_64\n" in makefile, "the platform the locks are for"


@pytest.mark.parametrize("env_file", ["mrisr.yaml", "slurm.yaml"])
def test_conda_environments_pin_the_locked_versions(locks, env_file):
    cpu = locks["cpu"]
    env = conda_pins(env_file)
    assert env.pop("python") == "=3.11", "the Python the locks are resolved for"
    for package, spec in env.items():
        assert spec == f"=={Version(cpu[package][0]).public}", f"{env_file}: {package} {spec}"
    wanted = {r.name for r in pyproject_requirements()} - {"pytest", "pytest-xdist", "moto"}  # test tools
    if env_file == "mrisr.yaml":  # the rules' environment: no Snakemake, no Slurm plugin
        wanted -= {"snakemake", "snakemake-executor-plugin-slurm"}
    assert set(env) == wanted, f"{env_file}: missing {wanted - set(env)}, extra {set(env) - wanted}"


def test_make_install_installed_exactly_the_lock():
    """In a .venv that `make install` made from a lock (as `make test` does), every locked version is installed."""
    stamps = [p for p in Path(sys.prefix).glob(".installed-*") if p.name != ".installed-0"]
    if not stamps:
        pytest.skip(f"{sys.prefix} was not installed from a lock file by `make install`")
    check = provenance.lock_check(REPO)
    assert check.lock == f"requirements/{stamps[0].name.removeprefix('.installed-')}.txt"
    assert check.differ == [], check.differ
