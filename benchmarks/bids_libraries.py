"""Reading a BIDS dataset and checking derivative names: pybids, snakebids, bidsschematools and mrisr's own.

    .venv/bin/python benchmarks/bids_libraries.py [--pybids PYTHON] [--snakebids PYTHON] [--repeats 3]

builds two synthetic BIDS datasets in a temporary folder (1,000 subjects with
one T1w each, and 1,000 subjects with two sessions each; sidecars beside
every image, a functional run for every fifth subject; the images are empty
files, which is all that finding them reads), then times, each in a fresh
process (wall seconds including the interpreter's start and the imports,
median of ``--repeats``):

- ``find_bids``: mrisr's folder walk (``mrisr.data.local.find_bids``), which
  every Snakemake process of a local-BIDS run calls when it parses the workflow;
- pybids: ``BIDSLayout(root, validate=False)`` and a query for the T1w files,
  with and without indexing the sidecars' metadata, with ``--pybids`` the
  Python of a virtual environment holding pybids (``pip install pybids``);
- snakebids: ``generate_inputs`` with its pybids query, with ``--snakebids``
  likewise (``pip install snakebids``);
- bidsschematools: ``mrisr.data.bids.tree_problems`` over a derivatives tree of
  3,000 files, the BIDS schema's own file rules (what apply mode's QC page
  checks before it is written).

Writes benchmarks/results/bids_libraries.tsv with the 1-minute load average
beside each row (docs/benchmarks.md, "BIDS libraries").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIND_BIDS = "import sys; from mrisr.data.local import find_bids; print(len(find_bids(sys.argv[1], sessions=True)))"
PYBIDS = """import sys
from bids import BIDSLayout, BIDSLayoutIndexer
kw = {"indexer": BIDSLayoutIndexer(validate=False, index_metadata=False)} if sys.argv[2] == "no_metadata" else {}
layout = BIDSLayout(sys.argv[1], validate=False, **kw)
print(len(layout.get(suffix="T1w", extension=[".nii", ".nii.gz"], return_type="filename")))"""
SNAKEBIDS = """import sys
from snakebids import generate_inputs
inputs = generate_inputs(bids_dir=sys.argv[1], pybids_inputs={"t1w": {
    "filters": {"suffix": "T1w", "extension": ".nii.gz", "datatype": "anat"}, "wildcards": ["subject", "session"]}})
print(len(inputs["t1w"].expand()))"""
TREE = "import sys; from mrisr.data.bids import tree_problems; print(len(tree_problems(sys.argv[1])))"


def make_dataset(root: Path, subjects: int, sessions: int) -> int:
    """A raw BIDS dataset of empty images with sidecars; returns its T1w count."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0"}))
    count = 0
    for k in range(1, subjects + 1):
        for ses in ([f"ses-{s}" for s in range(1, sessions + 1)] if sessions else [None]):
            folder = root / f"sub-{k:04d}" / (ses or "")
            prefix = f"sub-{k:04d}" + (f"_{ses}" if ses else "")
            (folder / "anat").mkdir(parents=True)
            (folder / "anat" / f"{prefix}_T1w.nii.gz").write_bytes(b"")
            (folder / "anat" / f"{prefix}_T1w.json").write_text("{}")
            count += 1
            if k % 5 == 0:
                (folder / "func").mkdir()
                (folder / "func" / f"{prefix}_task-rest_bold.nii.gz").write_bytes(b"")
    return count


def make_derivatives(root: Path, scans: int) -> None:
    """apply mode's tree for ``scans`` scans: SR, sd and mask, each with its sidecar (6 files per scan)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "mrisr"}]}))
    for k in range(1, scans + 1):
        anat = root / f"sub-{k:04d}" / "anat"
        anat.mkdir(parents=True)
        for name in ("desc-sr_T1w", "desc-sd_T1w", "desc-brain_mask"):
            (anat / f"sub-{k:04d}_{name}.nii.gz").write_bytes(b"")
            (anat / f"sub-{k:04d}_{name}.json").write_text("{}")


def timed(python: str, code: str, *args: str, repeats: int) -> tuple[float, str, str]:
    """Median wall seconds of ``python -c code args`` in fresh processes, its last output line, the load."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    seconds, out = [], ""
    load = open("/proc/loadavg").read().split()[0]
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env)
        seconds.append(time.perf_counter() - start)
        if proc.returncode:
            raise RuntimeError(f"{python} {args}: {proc.stderr[-2000:]}")
        out = proc.stdout.strip().splitlines()[-1]
    return statistics.median(seconds), out, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pybids", help="the Python of a virtual environment with pybids")
    parser.add_argument("--snakebids", help="the Python of a virtual environment with snakebids")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bids_libraries.tsv")
    args = parser.parse_args()
    rows = ["tool\tdataset\tscans\tmedian_s\tresult\tload_avg_1min"]
    with tempfile.TemporaryDirectory() as scratch:
        datasets = {"1000_subjects": (1000, 0), "1000_subjects_2_sessions": (1000, 2)}
        for name, (subjects, sessions) in datasets.items():
            scans = make_dataset(Path(scratch) / name, subjects, sessions)
            path = str(Path(scratch) / name)
            runs = [("find_bids", sys.executable, FIND_BIDS, (path,))]
            if args.pybids:
                runs += [("pybids", args.pybids, PYBIDS, (path, "metadata")),
                         ("pybids_no_metadata", args.pybids, PYBIDS, (path, "no_metadata"))]
            if args.snakebids:
                runs += [("snakebids", args.snakebids, SNAKEBIDS, (path,))]
            for tool, python, code, argv in runs:
                seconds, out, load = timed(python, code, *argv, repeats=args.repeats)
                rows.append(f"{tool}\t{name}\t{scans}\t{seconds:.3f}\t{out} T1w found\t{load}")
                print(rows[-1], flush=True)
        derivatives = Path(scratch) / "derivatives"
        make_derivatives(derivatives, 500)
        seconds, out, load = timed(sys.executable, TREE, str(derivatives), repeats=args.repeats)
        rows.append(f"bidsschematools_tree_problems\tderivatives\t500\t{seconds:.3f}\t{out} problems in 3,001 files\t{load}")
        print(rows[-1], flush=True)
    args.out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
