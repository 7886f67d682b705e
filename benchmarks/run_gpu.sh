#!/usr/bin/env bash
# bash benchmarks/run_gpu.sh — every GPU test and benchmark in one go (a few minutes on an H100 / H200):
# Triton kernel tests on CUDA, the CUDA kernels of the plugins against the torch reference, parity with the
# official ToST code when TOST_OFFICIAL_DIR is set, then benchmarks/kernels.py and benchmarks/plugins.py.
# Wheels in .whl/ (e.g. fla-core for the fla comparison) are installed first when present.
#   ONLY_TRITON=1    Triton tests and kernel benchmark only (no plugin build, CUDA-kernel tests or plugin benchmark)
#   SWEEP=1          first run benchmarks/sweep.py, one process per op in SWEEP_OPS (default tssa causal_tssa
#                    causal_linear_attention), each under SWEEP_LIMIT seconds (default 240); kernels.py then uses
#                    the best settings
#   SWEEP_ARGS       extra arguments of benchmarks/sweep.py, e.g. "--heads 20" (the causal ops at ToST-large's width)
#   KERNELS_ARGS     extra arguments of benchmarks/kernels.py, e.g. "--quick --no-compile --profile --graph"
#   SAMPLE=1         also samples/04_train_triton on the GPU (300 steps against the PyTorch backend, then export)
#   TRAIN_STEP=1     also benchmarks/train_step.py (whole models' training steps against the softmax baseline), with
#                    TRAIN_ARGS (e.g. "--seq 4096 --vision none") under TRAIN_LIMIT seconds (default 300)
#   NCU=1            also Nsight Compute over benchmarks/profile_ncu.py (one file each in RESULTS, NCU_LIMIT seconds
#                    each, default 150): resident TSSA, the TSSA passes, causal TSSA; NCU_SECTIONS overrides what it reads
#   HOST=1           also benchmarks/host_time.py (where the host's time goes in an eager forward+backward of each
#                    op; under HOST_LIMIT seconds, default 120)
#   TUNED            a sweep.json from an earlier run: kernels.py runs with its best settings (without SWEEP=1)
#   SKIP_TESTS=1, SKIP_KERNELS=1   leave out the tests or the kernel benchmark (to split a run across two calls)
#   TEST_FILTER      a pytest -k expression choosing the tests, e.g. "on_gpu" (the GPU-only ones) when time is short
#   RESULTS          where logs and JSON go (default benchmarks/results)
#   STEP_LIMIT       seconds the kernel benchmark may take (default 420), TEST_LIMIT the tests (default 240):
#                    a step past its limit is stopped and the next one runs. Tests that time out (a kernel that
#                    never finishes) make kernels.py leave out the launch scheme the settings did not choose.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
LIMIT=${STEP_LIMIT:-420}
TEST_LIMIT=${TEST_LIMIT:-240}
mkdir -p "$RESULTS"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
# the compiler decides layouts and registers (docs/kernel_design.md has figures for Triton 3.6 and 3.9): record it
python3 -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}')" \
  | tee -a "$RESULTS/gpu.txt"
status=0
TESTS="tests/ops/triton"
if [ -z "${ONLY_TRITON:-}" ]; then
  CAP=$(python3 -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
  cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES="$CAP" -DTensorRT_ROOT=/nonexistent > /dev/null \
    && cmake --build build --target tost_kernels -j 16 > /dev/null && echo "built build/libtost_kernels.so (sm_$CAP)"
  TESTS="$TESTS tests/plugins/test_cuda_kernels.py tests/models/test_official_parity.py"
fi
OTHER=""
source benchmarks/run_until_summary.sh
if [ -z "${SKIP_TESTS:-}" ]; then
  run_until_summary "$RESULTS/gpu_tests.log" python3 -m pytest -v -p no:cacheprovider -n 8 -rf --tb=line \
    -o faulthandler_timeout=100 ${TEST_FILTER:+-k "$TEST_FILTER"} $TESTS
  rc=$?
  grep -E "FAILED|ERROR|passed|failed|Timeout" "$RESULTS/gpu_tests.log" | tail -40
  [ $rc -ne 0 ] && status=1
  [ $rc -eq 124 ] && OTHER="--no-other" && echo "tests timed out: the other launch scheme is not benchmarked"
fi
TUNED=${TUNED:+--tuned $TUNED}
if [ -n "${SWEEP:-}" ]; then
  for op in ${SWEEP_OPS:-tssa causal_tssa causal_linear_attention}; do
    timeout "${SWEEP_LIMIT:-240}" python3 benchmarks/sweep.py --ops "$op" ${SWEEP_ARGS:-} --out "$RESULTS" 2>&1 \
      | tee -a "$RESULTS/sweep.log" || { status=1; echo "sweep of $op stopped"; }
  done
  [ -f "$RESULTS/sweep.json" ] && TUNED="--tuned $RESULTS/sweep.json"
fi
if [ -z "${SKIP_KERNELS:-}" ]; then
  timeout "$LIMIT" python3 benchmarks/kernels.py ${KERNELS_ARGS:-} $OTHER $TUNED --out "$RESULTS" 2>&1 \
    | tee "$RESULTS/kernels.log" || status=1
fi
if [ -n "${SAMPLE:-}" ]; then
  { python3 samples/04_train_triton/train.py --check-against torch --save "$RESULTS/sample04" \
      && python3 -m tost_edge.cli export tost_lm_tiny --checkpoint "$RESULTS/sample04" --graph stream \
           -o "$RESULTS/sample04_bundle" --steps 8 > /dev/null \
      && python3 samples/01_stream_tokens/stream_tokens.py "$RESULTS/sample04_bundle" --tokens 16; } 2>&1 \
    | tee "$RESULTS/sample04.log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && status=1
fi
if [ -n "${HOST:-}" ]; then
  timeout "${HOST_LIMIT:-120}" python3 benchmarks/host_time.py --out "$RESULTS" 2>&1 | tee "$RESULTS/host_time.log" \
    || status=1
fi
if [ -n "${TRAIN_STEP:-}" ]; then
  timeout "${TRAIN_LIMIT:-300}" python3 benchmarks/train_step.py ${TRAIN_ARGS:-} --out "$RESULTS" 2>&1 \
    | tee "$RESULTS/train_step.log" || status=1
fi
if [ -n "${NCU:-}" ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
  SECTIONS=${NCU_SECTIONS:-"SpeedOfLight Occupancy LaunchStats WarpStateStats SchedulerStats MemoryWorkloadAnalysis"}
  for spec in "tssa_resident tssa --set RESIDENT=true" "tssa_passes tssa" "causal_tssa causal_tssa"; do
    set -- $spec; name=$1; shift
    # --clock-control none: the kernels at the clocks they train at; the profiled range skips warm-up and autotuning
    timeout "${NCU_LIMIT:-150}" "${NCU_BIN:-ncu}" --profile-from-start off --clock-control none \
      $(printf -- "--section %s " $SECTIONS) python3 benchmarks/profile_ncu.py "$@" --calls 1 \
      > "$RESULTS/ncu_$name.txt" 2>&1 || { status=1; echo "ncu $name stopped (see $RESULTS/ncu_$name.txt)"; }
    grep -E "^  [a-z_]+|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per" \
      "$RESULTS/ncu_$name.txt" | head -40
  done
fi
if [ -z "${ONLY_TRITON:-}" ]; then
  python3 benchmarks/plugins.py --lib build/libtost_kernels.so --out "$RESULTS" 2>&1 | tee "$RESULTS/plugins.log" \
    || status=1
fi
exit $status
