"""A one-node Slurm cluster on this machine for the tests: munged, slurmctld, slurmd.

The node declares four GPUs as a generic resource (GRES) so that GPU jobs are
scheduled as on a GPU node; the "devices" are /dev/null, /dev/zero, /dev/full
and /dev/urandom, no GPU exists, and jobs run on the CPU (they see CUDA_VISIBLE_DEVICES but no CUDA
device). With ``SlurmdParameters=config_overrides`` the node advertises the
CPUs and memory of a small GPU node, so the Slurm profile's real requests
(8 CPUs per GPU, 16 GB) are accepted unchanged on a 2-core machine.

Facts this relies on (Debian's Slurm 22.05 with snakemake-executor-plugin-slurm 2.8.0):
- slurm.conf must be /etc/slurm/slurm.conf: the plugin's job wrapper drops
  SLURM_* variables, so a SLURM_CONF elsewhere breaks the srun inside jobs.
- There is no accounting database (sacct fails), so Snakemake must query job
  states with squeue (``--slurm-status-command squeue``) and finished jobs
  must stay visible to squeue and scontrol: MinJobAge=600.
- A GRES without ``File=`` drains the node.

The cluster writes /etc/slurm/slurm.conf and gres.conf only where none exist
or where an earlier run of these tests wrote them (first line ``MARKER``), and
removes them when it stops; it stops exactly the daemons it started, by PID.
Two test sessions on one machine (several checkouts) take turns: a session
holds ``LOCK`` from start to stop, and the next one waits for it.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_DIR = Path("/etc/slurm")
MARKER = "# Written by mrisr's tests (tests/slurm_cluster.py) for a throw-away one-node cluster."
SBIN = os.pathsep.join(("/usr/sbin", "/sbin", os.environ.get("PATH", "")))
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
LOCK = Path("/tmp/mrisr-slurm-tests.lock")
GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")  # stand-ins: no GPU exists
GPUS = len(GPU_FILES)
CPUS = 32
MEMORY_MB = 64000


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN)


def unavailable_reason() -> str | None:
    """Why this machine cannot run the test cluster, or None if it can."""
    missing = [b for b in BINARIES if which(b) is None]
    if missing:
        return ("Slurm is not installed (missing " + ", ".join(missing) + "); on Debian: apt-get install "
                "--no-install-recommends slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged for the test cluster needs root"
    for name in ("slurm.conf", "gres.conf"):
        path = SLURM_DIR / name
        if path.exists() and not path.read_text().startswith(MARKER):
            return f"{path} exists and was not written by these tests; not touching a real Slurm configuration"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


def slurm_conf(node: str, state: Path) -> str:
    return f"""{MARKER}
ClusterName=mrisrtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={state}/jobcomp.txt
MinJobAge=600
KillWait=30
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(node: str) -> str:
    files = "\n".join(f"NodeName={node} Name=gpu File={f}" for f in GPU_FILES)
    return f"{MARKER}\nAutoDetect=off\n{files}\n"


class Cluster:
    """Start with ``start()``, stop with ``stop()`` (also after a failed start)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.written: list[Path] = []
        self._lock = None

    def _daemon(self, name: str, args: list[str], **kwargs) -> None:
        out = open(self.state / f"{name}.out", "w")
        self.processes[name] = subprocess.Popen([which(name), *args], stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True, **kwargs)

    def _munge_works(self) -> bool:
        return subprocess.run(f"{which('munge')} -n | {which('unmunge')}", shell=True,
                              capture_output=True).returncode == 0

    def _take_lock(self, timeout: float) -> None:
        self._lock = open(LOCK, "a")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test session held {LOCK} for {timeout:.0f} s") from None
                time.sleep(2)

    def start(self, timeout: float = 90, lock_timeout: float = 1800) -> None:
        self._take_lock(lock_timeout)
        for sub in ("ctld", "d"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        SLURM_DIR.mkdir(exist_ok=True)
        for name, text in (("slurm.conf", slurm_conf(self.node, self.state)), ("gres.conf", gres_conf(self.node))):
            (SLURM_DIR / name).write_text(text)
            self.written.append(SLURM_DIR / name)
        if not self._munge_works():  # a munged already serving this machine is used as it is
            run_dir = Path("/run/munge")
            run_dir.mkdir(exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run([which("mungekey") or "mungekey", "--create"], check=True, user="munge")
            self._daemon("munged", ["--foreground", "--force"], user="munge", group="munge", extra_groups=[])
            self._wait(self._munge_works, timeout, "munged to answer")
        self._daemon("slurmctld", ["-D", "-c", "-i"])
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0, timeout, "slurmctld to answer")
        self._daemon("slurmd", ["-D"])
        self._wait(lambda: self._run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", timeout,
                   "the node to be idle")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([which(args[0]), *args[1:]], capture_output=True, text=True)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted(self.state.glob("*.out")) + sorted(self.state.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (finished ones for MinJobAge), as scontrol's key=value fields."""
        out = self._run("scontrol", "show", "job", "--oneliner").stdout
        jobs = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            fields = {}
            for item in line.split():
                key, _, value = item.partition("=")
                fields.setdefault(key, value)
            jobs.append(fields)
        return jobs

    def stop(self) -> None:
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self._run("scancel", "--full", "--user", "root")
            deadline = time.monotonic() + 60
            while self._run("squeue", "-h", "-t", "PD,R,CG").stdout.strip() and time.monotonic() < deadline:
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
