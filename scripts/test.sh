#!/usr/bin/env bash
# bash scripts/test.sh — create .venv-test, install tost-edge with its test extras and run the whole suite
# (Triton kernels run on the CPU through TRITON_INTERPRET=1; plugin builds run when nvcc and headers exist).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip
.venv-test/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
.venv-test/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
