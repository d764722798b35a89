"""Network cost: training-step time against MONAI's DiffusionModelUNet, and inference memory.

1. Time per training step (forward + backward + AdamW, batch 4 of 32^3
   patches, 2 input channels) of our 3D U-Net, our 3x2D variant, and MONAI's
   ``DiffusionModelUNet`` of the same widths (16, 32, 64), one residual block
   per level, attention at the coarsest level. Median of timed steps after
   warm-up.
2. Peak resident memory of whole-volume inference (one network evaluation
   over the 197 x 233 x 189 MNI152 1 mm template through the patch-blended
   sliding window, 96^3 patches): the peak resident size (VmHWM) of a child
   process that holds only Python, torch, the model and the volume (read
   from a .npy file), also read before the pass; the goal is <= 4 GB.

Writes benchmarks/results/network_cost.tsv.

    .venv/bin/pip install -e ".[bench]"    # MONAI, for the comparison only
    .venv/bin/python benchmarks/network_cost.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrisr.diffusion.nets import unet_from_config  # noqa: E402

MODEL = {"base_channels": 16, "channel_mult": [1, 2, 4], "num_res_blocks": 1, "attention": True, "num_heads": 4}


class MonaiAdapter(torch.nn.Module):
    """MONAI's DiffusionModelUNet behind our (x, cond, t) interface (channel concat)."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.net = DiffusionModelUNet(
            spatial_dims=3, in_channels=2, out_channels=1, num_res_blocks=1, channels=(16, 32, 64),
            attention_levels=(False, False, True), norm_num_groups=8, num_head_channels=16,
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, cond], dim=1), t)


def step_time(model: torch.nn.Module, steps: int = 8, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x, cond = torch.randn(4, 1, 32, 32, 32, generator=gen), torch.randn(4, 1, 32, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (4,), generator=gen)
    times = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        loss = (model(x, cond, t) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


MEMORY_CHILD = """
import sys, time, json


def peak_rss_gb():
    # VmHWM: this process's own peak. ru_maxrss would not do: Linux carries
    # the parent's resident size at fork into a child's ru_maxrss across exec.
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    return kb / 1024**2


sys.path.insert(0, {src!r})
import numpy as np, torch
from mrisr.diffusion.nets import unet_from_config
from mrisr.diffusion.sampler import sliding_window
torch.set_num_threads(2)
vol = np.load({volume!r})
model = unet_from_config({model!r}).eval()
x = torch.from_numpy(vol)[None, None]
pad = [(-s) % model.divisor for s in x.shape[2:]]
x = torch.nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
t = torch.tensor([500])
before = peak_rss_gb()
start = time.perf_counter()
with torch.no_grad():
    out = sliding_window(lambda b: model(b[:, :1], b[:, 1:], t.expand(b.shape[0])), torch.cat([x, x], 1), 96, 0.25, 1)
seconds = time.perf_counter() - start
print(json.dumps({{"shape": list(vol.shape), "seconds": seconds, "rss_before_gb": before,
                  "peak_rss_gb": peak_rss_gb()}}))
"""


def main() -> None:
    torch.set_num_threads(2)
    rows = ["measure\tmodel\tparameters\tvalue\tunit"]
    models = {"mrisr UNet 3D": unet_from_config(MODEL), "mrisr 3x2D": unet_from_config({**MODEL, "variant": "triplanar2d"})}
    try:
        models["MONAI DiffusionModelUNet"] = MonaiAdapter()
    except ImportError:
        print("MONAI not installed (pip install -e '.[bench]'): skipping its row", file=sys.stderr)
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        seconds = step_time(model)
        rows.append(f"train_step_b4_32cube\t{name}\t{n}\t{seconds:.3f}\ts")
        print(rows[-1], flush=True)
    # The template is read here, once, so that nilearn's loader does not count
    # towards the child's peak.
    from nilearn.datasets import load_mni152_template

    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "mni152_1mm.npy"
        np.save(volume, np.asarray(load_mni152_template(resolution=1).get_fdata(), np.float32))
        for variant in ("unet3d", "triplanar2d"):
            code = MEMORY_CHILD.format(src=str(ROOT / "src"), model={**MODEL, "variant": variant}, volume=str(volume))
            result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout)
            rows.append(f"rss_before_pass\t{variant}\t-\t{result['rss_before_gb']:.2f}\tGB")
            rows.append(f"whole_volume_pass_peak_rss\t{variant}\t-\t{result['peak_rss_gb']:.2f}\tGB")
            rows.append(f"whole_volume_pass_seconds\t{variant}\t-\t{result['seconds']:.1f}\ts")
            print("\n".join(rows[-3:]), flush=True)
    out = ROOT / "benchmarks" / "results" / "network_cost.tsv"
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
