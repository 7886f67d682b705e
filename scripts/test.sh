#!/usr/bin/env bash
# bash scripts/test.sh — create .venv-test, install tost-edge with its test extras and run the whole suite
# (Triton kernels run on the CPU through TRITON_INTERPRET=1; plugin builds run when nvcc and headers exist).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
.venv-test/bin/python -m pip install -q --upgrade pip
.venv-test/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# A second Triton beside the venv (not in it): the kernels must also compile under 3.6, the version CUDA builds of
# torch 2.11 pin, whose layout choices differ from the installed one's (tests/ops/triton/test_compile_for_gpu.py).
if [ ! -d .triton-3.6/triton ] && ! .venv-test/bin/python -m pip install -q --no-deps --target .triton-3.6 triton==3.6.0; then
    echo "triton 3.6.0 not installable here: its compile test will skip" >&2
fi
[ -d .triton-3.6/triton ] && export TOST_EDGE_EXTRA_TRITON="$PWD/.triton-3.6"
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
.venv-test/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
