#!/usr/bin/env bash
# Wall time of the README's demo command on a fresh clone, and its metrics.
# Writes benchmarks/results/demo.tsv (seconds) and demo_metrics.tsv.
#   bash benchmarks/demo.sh [DIR]     # DIR: keep the run's results/ there
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/mrisr"
cd "$work/mrisr"
t0=$(date +%s)
make install > "$work/install.log" 2>&1
t1=$(date +%s)
make demo > "$work/demo.log" 2>&1
t2=$(date +%s)
mkdir -p "$root/benchmarks/results"
{
  printf 'commit\tcores\tinstall_s\tworkflow_s\ttotal_s\n'
  printf '%s\t%s\t%s\t%s\t%s\n' "$(git rev-parse --short HEAD)" "$(nproc)" $((t1 - t0)) $((t2 - t1)) $((t2 - t0))
} > "$root/benchmarks/results/demo.tsv"
cp results/metrics.tsv "$root/benchmarks/results/demo_metrics.tsv"
for f in results/benchmarks/*/*.tsv; do
  printf '%s\t%s\n' "${f#results/benchmarks/}" "$(tail -n 1 "$f" | cut -f1)"
done > "$root/benchmarks/results/demo_rule_seconds.tsv"
if [ -n "${1:-}" ]; then rm -rf "$1" && cp -a results "$1"; fi
cat "$root/benchmarks/results/demo.tsv" "$root/benchmarks/results/demo_metrics.tsv"
