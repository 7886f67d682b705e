#!/usr/bin/env bash
# bash benchmarks/run_gpu.sh — every GPU test and benchmark in one go (a few minutes on an H100 / H200):
# Triton kernel tests on CUDA, the CUDA kernels of the plugins against the torch reference, parity with the
# official ToST code when TOST_OFFICIAL_DIR is set, then benchmarks/kernels.py and benchmarks/plugins.py.
# Wheels in .whl/ (e.g. fla-core for the fla comparison) are installed first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
CAP=$(python3 -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES="$CAP" -DTensorRT_ROOT=/nonexistent > /dev/null \
  && cmake --build build --target tost_kernels -j 16 > /dev/null && echo "built build/libtost_kernels.so (sm_$CAP)"
status=0
python3 -m pytest -q -p no:cacheprovider -n 8 tests/ops/triton tests/plugins/test_cuda_kernels.py \
  tests/models/test_official_parity.py 2>&1 | tail -25 | tee "$RESULTS/gpu_tests.log" || status=1
python3 benchmarks/kernels.py ${KERNELS_ARGS:-} --out "$RESULTS" 2>&1 | tee "$RESULTS/kernels.log" || status=1
python3 benchmarks/plugins.py --lib build/libtost_kernels.so --out "$RESULTS" 2>&1 | tee "$RESULTS/plugins.log" || status=1
exit $status
