"""Apply mode's time per scan on demo-sized scans, with the demo's trained model.

1. Trains the demo's model in WORKDIR if it is not there yet, and fits its sd
   maps' scale on the validation subject (``snakemake
   results/models/stage1/checkpoint.pt results/calibration/sd_calibration.json`` with
   config/config.yaml: 2 mm demo subjects, one x2 stage, so its training LR is 4 mm).
2. Writes a BIDS dataset of whole-head demo scans at 4 mm that the model never
   saw (``mrisr demo-bids``: --subjects subjects, every second with two sessions).
3. Runs the README's apply command in WORKDIR (``--configfile config/config.yaml
   config/apply_demo.yaml``, the bids_root pointed at that dataset) with
   ``--cores 2`` and times it.
4. Reads every ``apply_scan`` job's Snakemake benchmark file.

    .venv/bin/python benchmarks/apply.py WORKDIR [--subjects 3]

Writes benchmarks/results/apply.tsv: one row per scan (wall and CPU seconds
of its apply_scan job, peak memory, input and output shapes) and a row
``all`` with the whole apply run's wall time divided by the scans. On a shared
machine the times are upper bounds (the load average is recorded).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str) -> None:
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--subjects", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "results" / "models" / "stage1" / "checkpoint.pt"
    sd_calibration = workdir / "results" / "calibration" / "sd_calibration.json"  # apply_demo.yaml's apply.sd_calibration
    if not (checkpoint.is_file() and sd_calibration.is_file()):
        snakemake(workdir, str(checkpoint.relative_to(workdir)), str(sd_calibration.relative_to(workdir)),
                  "--configfile", str(ROOT / "config" / "config.yaml"))
    bids = workdir / "demo_bids"
    subprocess.run([sys.executable, "-m", "mrisr.cli", "demo-bids", str(bids), "--subjects", str(args.subjects)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    apply_config = yaml.safe_load((ROOT / "config" / "apply_demo.yaml").read_text())
    apply_config["local"]["bids_root"] = str(bids)
    (workdir / "apply_bench.yaml").write_text(yaml.safe_dump(apply_config))
    start, load = time.monotonic(), os.getloadavg()[0]
    snakemake(workdir, "--configfile", str(ROOT / "config" / "config.yaml"), str(workdir / "apply_bench.yaml"))
    total = time.monotonic() - start
    rows = []
    for path in sorted((workdir / "results" / "benchmarks" / "apply_scan").rglob("*.tsv")):
        with open(path, newline="") as fh:
            bench = next(csv.DictReader(fh, delimiter="\t"))
        stem = path.relative_to(workdir / "results" / "benchmarks" / "apply_scan").with_suffix("").as_posix()
        raw = nib.load(workdir / "results" / "raw" / path.stem / "T1w.nii.gz")
        sr = nib.load(workdir / "results" / "derivatives" / "mrisr" / f"{stem}_desc-sr_T1w.nii.gz")
        rows.append([path.stem, "x".join(map(str, raw.shape)), "x".join(map(str, sr.shape)),
                     f"{float(bench['s']):.1f}", f"{float(bench['cpu_time']):.1f}", f"{float(bench['max_rss']):.0f}"])
    rows.append(["all", "", "", f"{total / len(rows):.1f}", "", ""])
    out = ROOT / "benchmarks" / "results" / "apply.tsv"
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["scan", "input_shape", "sr_shape", "seconds", "cpu_seconds", "max_rss_mb"])
        writer.writerows(rows)
        fh.write(f"# {len(rows) - 1} scans; whole apply run {total:.1f} s with --cores 2; "
                 f"1-min load average at start {load:.1f}\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
