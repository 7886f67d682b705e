#!/usr/bin/env bash
# bash scripts/quickstart.sh — install tost-edge in .venv and run the main job on CPU:
# build a small causal ToST LM, export it to a portable ONNX stream bundle and stream tokens from it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[export]"
.venv/bin/tost-edge quickstart "$@"
