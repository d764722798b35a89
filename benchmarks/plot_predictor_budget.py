"""The predictor candidates' validation gain against training seconds, as a figure for docs/benchmarks.md.

    .venv/bin/python benchmarks/plot_predictor_budget.py benchmarks/results/predictor_budget.tsv docs/img/predictor_budget.png

One line per candidate: the mean interior PSNR gain over the spline on the
demo's validation subjects and, dashed, on the real validation brains the
package does not ship, against the candidate's training seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tsv", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    gains: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(args.tsv) as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            gains[row["candidate"], row["group"]][float(row["seconds"])].append(float(row["gain_interior"]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours: dict[str, str] = {}
    for (candidate, group), by_time in sorted(gains.items()):
        colour = colours.setdefault(candidate, f"C{len(colours)}")
        times = sorted(by_time)
        ax.plot(times, [sum(by_time[t]) / len(by_time[t]) for t in times], marker="o", color=colour,
                linestyle="-" if group == "demo_val" else "--",
                label=f"{candidate} ({'demo val' if group == 'demo_val' else 'real val'})")
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel("training seconds on 2 CPU cores")
    ax.set_ylabel("interior PSNR gain over the spline (dB)")
    ax.set_title("Predictor candidates: validation gain per CPU second")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
