"""Run time of the report's rules and size of the report, on a finished run's results.

Copies a results directory (default ``results/``) to a scratch directory and
re-runs there, with Snakemake, only the rules ``plot_slices`` (one job per
test subject) and ``report`` of this checkout: the same jobs ``make demo``
ends with, everything upstream taken as it is. Repeats that ``--times`` times
and writes

- ``benchmarks/results/report.tsv``: seconds per job and run, from the rules'
  ``benchmark:`` files (wall clock of the job's script, as Snakemake measures it),
  and the wall time of the whole ``snakemake`` call;
- ``benchmarks/results/report_size.tsv``: the size of ``index.html`` and of
  each image embedded in it;
- ``benchmarks/results/report/``: the report and its figures from the last run
  (not committed: rebuild them with this script).

    .venv/bin/python benchmarks/report.py --results /path/to/results [--config config/config.yaml] [--times 3]

The config must be the one the results were made with (the demo's by default).
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
RULES = ("plot_slices", "report")


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def embedded_images(page: str) -> list[tuple[str, str, int]]:
    """(alt text, MIME type, decoded bytes) of every data-URI image in the page."""
    out = []
    for match in re.finditer(r'<img src="data:([^;]+);base64,([^"]+)" alt="([^"]*)"', page):
        out.append((match.group(3), match.group(1), len(base64.b64decode(match.group(2)))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--times", type=int, default=3)
    args = parser.parse_args()
    if not (args.results / "metrics.tsv").is_file():
        sys.exit(f"{args.results} has no metrics.tsv: run the workflow first")

    rows = []
    with tempfile.TemporaryDirectory(prefix="mrisr-report-bench-") as scratch:
        work = Path(scratch)
        shutil.copytree(args.results, work / "results", symlinks=True,
                        ignore=shutil.ignore_patterns("report", "logs"))
        # The results come without Snakemake's metadata: only modification
        # times count, so nothing upstream is re-run (--allowed-rules makes sure).
        for run in range(1, args.times + 1):
            start = time.perf_counter()
            snakemake(work, args.config.resolve(), "--forcerun", *RULES, "--allowed-rules", *RULES,
                      "--", "results/report/index.html")
            total = time.perf_counter() - start
            for rule in RULES:
                for bench in sorted((work / "results" / "benchmarks" / rule).glob("*.tsv")):
                    with open(bench, newline="") as fh:
                        last = list(csv.DictReader(fh, delimiter="\t"))[-1]
                    rows.append([run, rule, bench.stem, last["s"], last["cpu_time"], last["max_rss"]])
            rows.append([run, "snakemake", "whole call", f"{total:.2f}", "", ""])
            print(f"run {run}: snakemake call {total:.1f} s", flush=True)
        report_dir = work / "results" / "report"
        page = (report_dir / "index.html").read_text(encoding="utf-8")
        if (OUT / "report").exists():
            shutil.rmtree(OUT / "report")
        shutil.copytree(report_dir, OUT / "report")

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "report.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["run", "rule", "job", "seconds", "cpu_seconds", "max_rss_mb"])
        writer.writerows(rows)
    size = len(page.encode("utf-8"))
    images = embedded_images(page)
    with open(OUT / "report_size.tsv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["item", "mime", "bytes"])
        writer.writerow(["index.html", "text/html", size])
        writer.writerows([alt, mime, n] for alt, mime, n in images)
    print((OUT / "report.tsv").read_text())
    print((OUT / "report_size.tsv").read_text())


if __name__ == "__main__":
    main()
