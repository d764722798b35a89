#!/usr/bin/env bash
# Wall time of the README's demo command on a fresh clone, and its metrics:
# benchmarks/results/demo.tsv (seconds), demo_metrics.tsv, demo_rule_seconds.tsv.
#   bash benchmarks/demo.sh [DIR]     # DIR: keep the run's results/ there
exec bash "$(dirname "$0")/config_e2e.sh" demo "$@"
