#!/usr/bin/env bash
# Wall time and metrics of one config run end to end from a fresh clone, on the demo:
#   bash benchmarks/config_e2e.sh config/cascade_x4.yaml [DIR]
# clones this checkout, `make install`, then
#   .venv/bin/snakemake --configfile config/config.yaml CONFIG --cores 2
# and writes benchmarks/results/NAME_e2e.tsv (seconds), NAME_e2e_metrics.tsv
# (results/metrics.tsv) and NAME_e2e_rule_seconds.tsv (every job's wall seconds),
# NAME being CONFIG's file name without .yaml. DIR: keep the run's results/ there.
set -euo pipefail
config="$1"
name="$(basename "$config" .yaml)"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/mrisr"
cd "$work/mrisr"
t0=$(date +%s)
make install > "$work/install.log" 2>&1
t1=$(date +%s)
.venv/bin/snakemake --configfile config/config.yaml "$config" --cores 2 > "$work/run.log" 2>&1
t2=$(date +%s)
out="$root/benchmarks/results"
mkdir -p "$out"
{
  printf 'commit\tconfig\tcores\tinstall_s\tworkflow_s\ttotal_s\n'
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(git rev-parse --short HEAD)" "$config" "$(nproc)" \
    $((t1 - t0)) $((t2 - t1)) $((t2 - t0))
} > "$out/${name}_e2e.tsv"
cp results/metrics.tsv "$out/${name}_e2e_metrics.tsv"
for f in results/benchmarks/*/*.tsv; do
  printf '%s\t%s\n' "${f#results/benchmarks/}" "$(tail -n 1 "$f" | cut -f1)"
done > "$out/${name}_e2e_rule_seconds.tsv"
if [ -n "${2:-}" ]; then rm -rf "$2" && cp -a results "$2"; fi
cat "$out/${name}_e2e.tsv" "$out/${name}_e2e_metrics.tsv"
