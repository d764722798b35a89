#!/usr/bin/env bash
# Wall time of `make install` on fresh clones: BEFORE (a commit from before the
# lock files: pip resolves pyproject.toml's ranges) against this checkout
# (`make install`: the lock), taken in turn RUNS times, with the load average
# at the start of each run (the machine may be shared). Then, when it is
# locked (LOCK=cpu), the last .venv's `pip freeze` against requirements/cpu.txt.
# Appends to benchmarks/results/install.tsv; writes install_freeze.diff.
#   bash benchmarks/install.sh BEFORE [RUNS] [MAKE_ARGS]   # e.g. f6ab8f1 3 "LOCK=0"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
before="${1:?the commit to compare with}"
runs="${2:-2}"
after_args="${3:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
out="$root/benchmarks/results/install.tsv"
mkdir -p "$(dirname "$out")"
[ -f "$out" ] || printf 'date\tcommit\tlabel\tmake_args\trun\tload1\tinstall_s\tpackages\n' > "$out"

measure() {  # label rev make_args run
  local dir="$work/$1-$4"
  git clone -q "$root" "$dir"
  git -C "$dir" checkout -q "$2"
  local load t0 t1
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  (cd "$dir" && make install $3 > "$work/$1-$4.log" 2>&1) || { cat "$work/$1-$4.log"; exit 1; }
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\n' "$(date -u +%FT%TZ)" "$(git -C "$dir" rev-parse --short HEAD)" \
    "$1" "${3:-}" "$4" "$load" "$(echo "$t1 - $t0" | bc)" \
    "$("$dir/.venv/bin/pip" freeze --all --exclude-editable | grep -vc '^pip==')" | tee -a "$out"
}

head_rev="$(git -C "$root" rev-parse HEAD)"
for run in $(seq "$runs"); do
  measure before "$before" "" "$run"
  measure after "$head_rev" "$after_args" "$run"
  last="$work/after-$run"
done

[ -f "$last/.venv/.installed-cpu" ] || exit 0
# The last locked .venv against the lock: every package with its locked and its
# installed version (pip itself, the venv's own, and the editable mrisr are not
# locked). install_freeze.tsv keeps the table, install_freeze.diff the rows that differ.
pins() { grep -E '^[A-Za-z0-9]' "$1" | sed 's/ *\\$//'; }
table() { awk -F'==' '{n = tolower($1); gsub(/[-_.]+/, "-", n); print n "\t" $2}' | sort -k1,1; }
pins "$root/requirements/cpu.txt" | table > "$work/locked"
"$last/.venv/bin/pip" freeze --all --exclude-editable | grep -v '^pip==' | table > "$work/installed"
{ printf 'package\tlocked\tinstalled\n'; join -t $'\t' -a1 -a2 -e - -o 0,1.2,2.2 "$work/locked" "$work/installed"; } \
  > "$root/benchmarks/results/install_freeze.tsv"
awk -F'\t' 'NR > 1 && $2 != $3' "$root/benchmarks/results/install_freeze.tsv" > "$root/benchmarks/results/install_freeze.diff" || true
n=$(($(wc -l < "$root/benchmarks/results/install_freeze.tsv") - 1))
if [ -s "$root/benchmarks/results/install_freeze.diff" ]; then
  echo "pip freeze differs from requirements/cpu.txt:"; cat "$root/benchmarks/results/install_freeze.diff"
else
  echo "pip freeze of the locked .venv = requirements/cpu.txt: $n packages, each at the locked version"
fi
