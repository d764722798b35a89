"""Training at HCP's size: memory, startup and loader speed against the cohort's size.

For cohorts of N synthetic full-size subjects (default 4, 16, 64) this writes
each subject's stage cache (``training.cache.write_stage_cache``) at the size
training reads for a 0.7 mm HCP T1w: 220 x 272 x 230 voxels, the 260 x 311 x
260 volume after ``skullstrip``'s crop (its brain an ellipsoid of about 1.5 L
at 0.7 mm, a smooth random texture inside; reading cost depends on sizes, not
on content). Then, in a fresh child process per cohort (so nothing is
shared between measurements):

- the peak resident size (VmHWM, the kernel's high-water mark) of a
  training job (``train_stage`` on the cohort's caches, all but two of the
  subjects for training and two for validation, the test suite's tiny
  U-Net without attention (tests/data/tiny.yaml: memory here is the data
  path's, not the network's activations), batch 2 of 64^3 patches, 3 steps, on the CPU), and
  the seconds from the process's
  start (before ``import torch``) to the end of its first step;
- the patches of 64^3 per second the loader (``training.patches.batch_loader``,
  batches of 8) delivers with 1 and 2 worker processes, over 20 batches after
  the first.

Goals (issue 13): VmHWM grows by < 50 MB per added subject and stays <= 6 GB
at 64; first step <= 30 s at any size; >= 20 patches of 64^3 per second on
2 cores. Appends one row per cohort to benchmarks/results/train_scale.tsv.

    .venv/bin/python benchmarks/train_scale.py --cohorts 4 16 64 --work /tmp/train_scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPE = (220, 272, 230)
COLUMNS = ("date", "commit", "subjects", "cache_gb", "vmhwm_mb", "first_step_s", "patches_per_s_1_worker",
           "patches_per_s_2_workers")


def write_cohort(folder: Path, n: int) -> list[Path]:
    """N stage caches of synthetic full-size subjects (written once, reused by larger cohorts)."""
    import numpy as np

    from mrisr.diffusion.cascade import StagePair
    from mrisr.training import write_stage_cache

    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in SHAPE], indexing="ij")
    radius = (grids[0] / 0.7) ** 2 + (grids[1] / 0.8) ** 2 + (grids[2] / 0.7) ** 2
    mask = radius < 1.0
    out = []
    for k in range(n):
        directory = folder / f"sub{k:03d}"
        if not (directory / "cache.json").exists():
            rng = np.random.default_rng(k)
            texture = np.cumsum(rng.standard_normal(SHAPE[2], dtype=np.float32)) / 50.0
            target = np.where(mask, 0.6 + 0.2 * np.sin(grids[0] * (8 + k)) + texture, 0.0).astype(np.float32)
            cond = target + 0.02 * rng.standard_normal(SHAPE, dtype=np.float32)
            write_stage_cache(StagePair(cond=cond, target=target, mask=mask), directory, [1.4, 1.4, 1.4])
        out.append(directory)
    return out


CHILD = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np, torch, yaml
sys.path.insert(0, sys.argv[2])
from mrisr.training import CachedVolume, PatchSampler, StageRun, train_stage
from mrisr.training.patches import batch_loader
spec = json.loads(sys.argv[1])
torch.set_num_threads(2)
volumes = [CachedVolume(d) for d in spec["caches"]]
config = yaml.safe_load(open(spec["config"]))
config["train"].update(steps=3, batch_size=2, patch_size=64, val_patches=4, val_every=3, warmup_steps=1)
config["model"].update(attention=False)  # attention over 32^3 tokens would take the CPU minutes per step
config = {k: config[k] for k in ("cascade", "degrade", "diffusion", "model", "train")} | {"device": "cpu"}
run = StageRun(config, 0, spec["out"] + "/checkpoint.pt", spec["out"] + "/log.tsv", loader_workers=0)
first = []
train_stage(volumes[2:], volumes[:2], run, log=lambda m: None,
            on_step=lambda n: first.append(time.perf_counter() - start) if n == 1 else None)
def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
peak = vmhwm()
speeds = {}
for workers in (1, 2):
    batches = batch_loader(PatchSampler(volumes, 64, seed=workers), range(8), 0, 21, workers, False)
    next(batches)
    t0 = time.perf_counter()
    for _ in range(20):
        next(batches)
    speeds[workers] = 20 * 8 / (time.perf_counter() - t0)
    del batches  # stops its workers (they leave SIGTERM to this process, so exit cannot stop them)
print(json.dumps({"vmhwm_mb": peak, "first_step_s": first[0], "speeds": speeds}))
"""


def measure(caches: list[Path], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec = {"caches": [str(c) for c in caches], "config": str(ROOT / "tests" / "data" / "tiny.yaml"), "out": str(out)}
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec), str(ROOT / "src")], env=env,
                          capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohorts", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_scale.tsv")
    parser.add_argument("--keep", action="store_true", help="keep the caches under --work")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    if not args.out.exists():
        args.out.write_text("\t".join(COLUMNS) + "\n")
    for n in sorted(args.cohorts):
        caches = write_cohort(args.work / "caches", n)
        gb = sum(f.stat().st_size for c in caches for f in c.iterdir()) / 1e9
        result = measure(caches, args.work / f"run{n}")
        row = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), commit, n, f"{gb:.1f}",
               f"{result['vmhwm_mb']:.0f}", f"{result['first_step_s']:.1f}",
               f"{result['speeds']['1']:.0f}", f"{result['speeds']['2']:.0f}")
        print("\t".join(map(str, row)), flush=True)
        with open(args.out, "a") as fh:
            fh.write("\t".join(map(str, row)) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
