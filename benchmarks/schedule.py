"""Where each named schedule loses its signal (the reason cosine is the default).

Writes benchmarks/results/schedule.tsv: for T = 1000 and each schedule, the
first t with abar_t below 1e-2 and 1e-3, the share of the T steps whose abar_t
is below 1e-3 (steps that see essentially pure noise), and abar at T/2.

    .venv/bin/python benchmarks/schedule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mrisr.diffusion.schedule import SCHEDULES, make_schedule  # noqa: E402


def main() -> None:
    out = ROOT / "benchmarks" / "results" / "schedule.tsv"
    out.parent.mkdir(parents=True, exist_ok=True)
    T = 1000
    rows = ["schedule\tT\tfirst_t_abar_lt_1e-2\tfirst_t_abar_lt_1e-3\tshare_of_steps_abar_lt_1e-3\tabar_at_T_over_2"]
    for name in SCHEDULES:
        abar = make_schedule(name, T, 0.3).alphas_cumprod
        first = lambda thr: int(np.argmax(abar < thr)) + 1  # noqa: E731
        rows.append(f"{name}\t{T}\t{first(1e-2)}\t{first(1e-3)}\t{np.mean(abar < 1e-3):.3f}\t{abar[T // 2 - 1]:.3g}")
    out.write_text("\n".join(rows) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
