"""How long Snakemake takes to build the DAG (a dry run) for HCP-sized cohorts.

HCP-1200 has 1,113 subjects with T1w scans. This writes generated six-digit
subject IDs to a file, points a copy of config/config.yaml at them
(source: hcp, hcp.subjects_file) and times ``snakemake -n`` in a scratch
working directory, for several cohort sizes and a few repeats each. Nothing is
downloaded. Writes benchmarks/results/dag_scale.tsv.

    .venv/bin/python benchmarks/dag_scale.py [--sizes 8 100 1113] [--repeats 3]

``--snakefile OTHER/Snakefile --out FILE`` measures another checkout (e.g. an
older commit exported with ``git archive``) with this checkout's config.

``--slurm-jobs N`` counts instead what a full run of N subjects submits to
Slurm with ``profiles/slurm`` (a dry run with the profile: a group job is one
submission, a local rule none), per rule or group, into
benchmarks/results/slurm_jobs.tsv. Needs the Slurm executor plugin
(``pip install -e ".[slurm]"``), not a cluster.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def hcp_like_ids(n: int) -> list[str]:
    """n distinct six-digit IDs spread over HCP's range (not the real list, which needs HCP access)."""
    return [str(100206 + 797 * i) for i in range(n)]


def job_count(output: str) -> int:
    match = re.search(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no job count in snakemake's output:\n{output[-3000:]}")
    return int(match.group(1))


def dry_run(workdir: Path, config: Path, snakefile: Path) -> tuple[float, int]:
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake), "-n", "--quiet", "rules", "--snakefile", str(snakefile),
        "--directory", str(workdir), "--configfile", str(config), "--cores", "2",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, job_count(proc.stdout + proc.stderr)


def local_rules() -> set[str]:
    """The rules marked ``localrule: True`` in workflow/rules/ (they run where Snakemake runs, never submitted)."""
    local = set()
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in path.read_text().splitlines():
            match = re.match(r"\s*rule (\w+):", line)
            rule = match.group(1) if match else rule
            if re.match(r"\s*localrule: True", line) and rule:
                local.add(rule)
    return local | {"all"}


def slurm_submissions(output: str) -> collections.Counter:
    """Submissions per rule or group in a dry run's printout: each 'Group job NAME' once, each ungrouped
    (unindented) job of a rule that is not local once."""
    counts = collections.Counter(re.findall(r"Group job (\w+)", output))
    local = local_rules()
    for rule in re.findall(r"^rule (\w+):", output, flags=re.MULTILINE):
        if rule not in local:
            counts[rule] += 1
    return counts


def count_slurm_jobs(n: int, out: Path) -> None:
    """Write what a run of ``n`` HCP-like subjects submits with profiles/slurm to ``out``."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "subjects.txt").write_text("\n".join(hcp_like_ids(n)) + "\n")
        config = scratch / "config.yaml"
        config.write_text(yaml.safe_dump(base | {"source": "hcp", "hcp": {"subjects_file": str(scratch / "subjects.txt")}}))
        cmd = [str(Path(sys.executable).with_name("snakemake")), "-n", "--profile", str(ROOT / "profiles" / "slurm"),
               "--snakefile", str(ROOT / "Snakefile"), "--directory", str(scratch / "work"), "--configfile", str(config)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n --profile profiles/slurm failed:\n{proc.stderr[-3000:]}")
    counts = slurm_submissions(proc.stdout + proc.stderr)
    rows = ["subjects\trule_or_group\tsubmissions", *(f"{n}\t{k}\t{v}" for k, v in counts.most_common()),
            f"{n}\ttotal\t{sum(counts.values())}"]
    out.write_text("\n".join(rows) + "\n")
    print(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 100, 300, 1113])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--snakefile", type=Path, default=ROOT / "Snakefile")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dag_scale.tsv")
    parser.add_argument("--slurm-jobs", type=int, metavar="N", help="count a run's Slurm submissions instead")
    args = parser.parse_args()
    if args.slurm_jobs:
        count_slurm_jobs(args.slurm_jobs, ROOT / "benchmarks" / "results" / "slurm_jobs.tsv")
        return

    rows = ["subjects\tjobs\tmedian_s\tmin_s\tmax_s\trepeats\tload_avg_1min"]
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for n in args.sizes:
            listing = scratch / f"subjects_{n}.txt"
            listing.write_text("\n".join(hcp_like_ids(n)) + "\n")
            config = scratch / f"config_{n}.yaml"
            config.write_text(yaml.safe_dump(base | {"source": "hcp", "hcp": {"subjects_file": str(listing)}}))
            workdir = scratch / f"work_{n}"
            workdir.mkdir()
            times, jobs = [], 0
            for _ in range(args.repeats):
                seconds, jobs = dry_run(workdir, config, args.snakefile)
                times.append(seconds)
            load = os.getloadavg()[0]
            rows.append(
                f"{n}\t{jobs}\t{statistics.median(times):.2f}\t{min(times):.2f}\t{max(times):.2f}\t{args.repeats}\t{load:.1f}"
            )
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
