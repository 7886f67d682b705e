"""Inference kernels side by side on one GPU: the plugins' CUDA kernels (libtost_kernels.so through ctypes)
against the Triton kernels, forward only, at inference shapes (vision, prefill blocks, one-token steps).

    python benchmarks/plugins.py --lib build/libtost_kernels.so --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tost_edge.native import TostKernels  # noqa: E402
from tost_edge.ops import causal_linear_attention, causal_tssa, tssa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=None)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from triton.testing import do_bench
    dt = torch.float16 if args.dtype == "fp16" else torch.float32
    k = TostKernels(args.lib)
    rows = []
    name = torch.cuda.get_device_name()

    def row(op, shape, cuda_fn, triton_fn):
        with torch.no_grad():
            c = do_bench(cuda_fn, warmup=10, rep=50, return_mode="median")
            t = do_bench(triton_fn, warmup=10, rep=50, return_mode="median")
        rows.append({"op": op, "shape": shape, "cuda_ms": c, "triton_ms": t, "cuda_over_triton": c / t})
        print(f"{op:24s} {shape:26s} cuda {c:8.4f} ms  triton {t:8.4f} ms  cuda/triton {c / t:5.2f}", flush=True)

    for B, N, C, H in [(1, 196, 384, 8), (8, 196, 384, 8), (64, 4096, 384, 8)]:
        w = torch.randn(B, N, C, device="cuda", dtype=dt)
        temp = torch.rand(H, device="cuda") + 0.5
        row("tssa", f"B{B} N{N} C{C} H{H}", lambda: k.tssa(w, temp, H), lambda: tssa(w, temp, H, backend="triton"))
    for B, T, H in [(1, 1, 12), (64, 1, 12), (1, 64, 12), (8, 1024, 12), (1, 1, 20), (8, 1024, 20)]:
        D = 64
        w = torch.randn(B, T, H * D, device="cuda", dtype=dt)
        temp, bias = torch.rand(H, device="cuda") + 0.5, 0.01 * torch.randn(H, 4096, device="cuda")
        pos = torch.full((B,), 100, device="cuda", dtype=torch.int32)
        label = "causal_tssa step" if T == 1 else "causal_tssa prefill"
        row(label, f"B{B} T{T} H{H} D{D}", lambda: k.causal_tssa(w, temp, bias, H, pos=pos),
            lambda: causal_tssa(w, temp, bias, H, pos0=pos.long(), backend="triton"))
    for B, T, H in [(1, 1, 12), (64, 1, 12), (8, 1024, 12)]:
        D = 64
        q, kk, v = (torch.randn(B, T, H, D, device="cuda", dtype=dt) for _ in range(3))
        label = "linear_attn step" if T == 1 else "linear_attn prefill"
        row(label, f"B{B} T{T} H{H} D{D}", lambda: k.causal_linear_attention(q, kk, v),
            lambda: causal_linear_attention(q, kk, v, backend="triton"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"plugins_{name.replace(' ', '_')}_{args.dtype}.json").write_text(
        json.dumps({"device": name, "dtype": args.dtype, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
