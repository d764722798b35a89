#!/usr/bin/env bash
# Wall time and metrics of a run from a fresh clone, on the demo:
#   bash benchmarks/config_e2e.sh demo [DIR]                     # the README's `make demo`
#   bash benchmarks/config_e2e.sh config/cascade_x4.yaml [DIR]   # any config over config.yaml
# clones this checkout, runs `make install`, then `make demo` or
#   .venv/bin/snakemake --configfile config/config.yaml CONFIG --cores 2
# and writes benchmarks/results/PREFIX.tsv (seconds), PREFIX_metrics.tsv
# (results/metrics.tsv) and PREFIX_rule_seconds.tsv (every job's wall seconds):
# PREFIX is demo, or CONFIG's file name without .yaml plus _e2e.
# DIR: keep the run's results/ there.
set -euo pipefail
config="$1"
if [ "$config" = demo ]; then prefix=demo; else prefix="$(basename "$config" .yaml)_e2e"; fi
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/mrisr"
cd "$work/mrisr"
t0=$(date +%s)
make install > "$work/install.log" 2>&1
t1=$(date +%s)
if [ "$config" = demo ]; then
  make demo > "$work/run.log" 2>&1
else
  .venv/bin/snakemake --configfile config/config.yaml "$config" --cores 2 > "$work/run.log" 2>&1
fi
t2=$(date +%s)
out="$root/benchmarks/results"
mkdir -p "$out"
{
  printf 'commit\tcores\tinstall_s\tworkflow_s\ttotal_s\n'
  printf '%s\t%s\t%s\t%s\t%s\n' "$(git rev-parse --short HEAD)" "$(nproc)" $((t1 - t0)) $((t2 - t1)) $((t2 - t0))
} > "$out/$prefix.tsv"
cp results/metrics.tsv "$out/${prefix}_metrics.tsv"
# results/benchmarks/<rule>/<job>.tsv; a job's name may have folders (super_resolve/calibration/demo05)
find results/benchmarks -name '*.tsv' | sort | while read -r f; do
  printf '%s\t%s\n' "${f#results/benchmarks/}" "$(tail -n 1 "$f" | cut -f1)"
done > "$out/${prefix}_rule_seconds.tsv"
if [ -n "${2:-}" ]; then rm -rf "$2" && cp -a results "$2"; fi
cat "$out/$prefix.tsv" "$out/${prefix}_metrics.tsv"
