#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): training-step time, bf16 against
# float32, the inference memory curve and one whole-volume pass of
# config/hcp_gpu.yaml's network, written to benchmarks/results/gpu_check.tsv.
#
#   bash benchmarks/gpu_check.sh            # on a GPU node: the full check, a few minutes
#   bash benchmarks/gpu_check.sh --smoke    # anywhere: a tiny network, seconds (the test suite runs it)
#
# Further arguments go to the script (--out FILE, --config FILES...). Runs with
# .venv's Python when there is one, else $PYTHON or python3 (which needs torch,
# numpy, PyYAML and nibabel; the package is read from src/, not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
