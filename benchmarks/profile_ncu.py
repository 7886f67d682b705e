"""One op at one benchmark shape, warmed up, then a few forward+backward calls inside the CUDA profiler's range, for
Nsight Compute to read the hardware counters of exactly those kernels (GPU):

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python benchmarks/profile_ncu.py tssa --set RESIDENT=true
    NCU=1 bash benchmarks/run_gpu.sh                       # resident TSSA, the TSSA passes, fused causal TSSA
    TRITON_INTERPRET=1 python benchmarks/profile_ncu.py tssa --smoke   # CPU check of this script

The warm-up runs the autotuner and the compiles outside the range, so ncu's replays see only the kernels a training
step launches. Shapes: TSSA B64 N4096 C384 H8, causal ops B8 T4096 H12 D64 (bf16), as the roofline targets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoke  # noqa: E402  (benchmarks/smoke.py)
from tost_edge.ops import causal_linear_attention, causal_tssa, tssa  # noqa: E402
from tost_edge.ops.triton import settings, tssa as tt  # noqa: E402


def setting(text: str) -> tuple[str, object]:
    """KEY=VALUE, the value read as JSON (true, 8, null) or else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def call(op: str, dev: str, dt: torch.dtype, small: bool):
    """(fn running forward+backward once, its inputs)."""
    if op == "tssa":
        B, N, C, H = (2, 9, 32, 2) if small else (64, 4096, 384, 8)
        w = torch.randn(B, N, C, device=dev, dtype=dt, requires_grad=True)
        temp = (torch.rand(H, device=dev) + 0.5).requires_grad_()
        return lambda: tssa(w, temp, H, backend="triton"), [w, temp]
    B, T, H, D = (2, 9, 2, 16) if small else (8, 4096, 12, 64)
    if op == "causal_tssa":
        w = torch.randn(B, T, H * D, device=dev, dtype=dt, requires_grad=True)
        temp = (torch.rand(H, device=dev) + 0.5).requires_grad_()
        bias = (0.01 * torch.randn(H, T, device=dev)).requires_grad_()
        return lambda: causal_tssa(w, temp, bias, H, backend="triton")[0], [w, temp, bias]
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    return lambda: causal_linear_attention(q, k, v, backend="triton")[0], [q, k, v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("op", choices=["tssa", "causal_tssa", "causal_linear_attention"])
    ap.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                    help="a launch setting of the op (tost_edge.ops.triton.settings), e.g. RESIDENT=true; repeatable")
    ap.add_argument("--calls", type=int, default=2, help="forward+backward calls inside the profiled range")
    smoke.add_flag(ap)
    args = ap.parse_args()
    small = smoke.check(args, "benchmarks/profile_ncu.py")
    try:
        settings.apply({args.op: dict(args.set)})
    except ValueError as e:          # a misspelt or mistyped setting, named by settings.apply
        ap.error(str(e))
    dev, dt = ("cpu", torch.float32) if small else ("cuda", torch.bfloat16)
    fn, inputs = call(args.op, dev, dt, small)

    dy = smoke.output_grad(fn)

    def step():
        fn().backward(dy)
        for t in inputs:
            t.grad = None
    for _ in range(3):             # autotuning and compiles, outside the range
        step()
    if not small:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    for _ in range(args.calls):
        step()
    if not small:
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    ran = tt.last_run if args.op == "tssa" else None      # resident or passes: the resident kernels can fall back
    print(f"{args.op}: {args.calls} forward+backward calls profiled, settings {dict(args.set) or 'the defaults'}"
          + (f", ran {ran['forward']} / {ran['backward']}" if ran else ""), flush=True)


if __name__ == "__main__":
    main()
