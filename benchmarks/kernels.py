"""Kernel benchmark (GPU): Triton TSSA / causal TSSA / causal linear attention against the official formula in
eager PyTorch, torch.compile of it, and fla's chunk linear attention when importable.

    python benchmarks/kernels.py                          # all shapes, bf16, forward and forward+backward
    python benchmarks/kernels.py --quick --out benchmarks/results
    python benchmarks/kernels.py --quick --no-compile --profile     # plus the time of each kernel launch
    python benchmarks/kernels.py --quick --graph          # also time Triton and fla replayed from a CUDA graph
    python benchmarks/kernels.py --quick --ops causal      # causal TSSA and causal linear attention only
    python benchmarks/kernels.py --only "N4096 C384|T4096 H12"   # the roofline targets' shapes only
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke --graph --out /tmp/k   # CPU check of this script

Reports triton.testing.do_bench medians (ms), effective bandwidth (the minimum bytes an op must move: read w and
write y forward; also read w and dy and write dw backward) in GB/s and as a fraction of the card's HBM bandwidth
(the datasheet's: "peak", the targets' measure; and the device-to-device copy measured at the start: "copy"),
peak memory, and ratios against the Triton kernels measured in the same run. With --graph the Triton kernels (and
fla's) are also timed replayed from a CUDA graph (triton.testing.do_bench_cudagraph), as a captured training step
runs them: the difference to the plain timing is the host's launch overhead.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoke  # noqa: E402  (benchmarks/smoke.py)
from tost_edge.ops import causal_linear_attention, causal_linear_attention_qkvpacked, causal_tssa, tssa  # noqa: E402
from tost_edge.ops.triton import causal_tssa as ct, linear_attention as lat, tssa as tt  # noqa: E402
from tost_edge.ops.triton.utils import deterministic_algorithms  # noqa: E402

SMOKE = False   # --smoke: the whole script on CPU under the interpreter, tiny shapes, nothing meaningful timed
HBM_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0, "Orin": 204.8, "Thor": 273.0}


def card_bandwidth(name: str) -> float:
    for key, bw in HBM_GBPS.items():
        if key in name:
            return bw
    return float("nan")


# -- the official formulas, as eager PyTorch (the baseline users run today) ---------------------------------
def official_tssa(w, temp, H):
    B, N, C = w.shape
    w = w.view(B, N, H, C // H).transpose(1, 2)
    w_sq = F.normalize(w, dim=-2) ** 2
    Pi = torch.softmax(torch.sum(w_sq, dim=-1) * temp, dim=1)
    dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w ** 2)
    out = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
    return out.transpose(1, 2).reshape(B, N, C)


def official_causal_tssa(w, temp, bias, H):
    B, T, C = w.shape
    w = w.view(B, T, H, C // H).transpose(1, 2)
    w_sq = w ** 2
    denom = torch.cumsum(w_sq, dim=-2).clamp_min(1e-12)
    Pi = F.softmax(torch.sum(w_sq / denom + bias[:, :T, :], dim=-1) * temp, dim=1)
    dots = torch.cumsum(w_sq * Pi.unsqueeze(-1), dim=-2) / (Pi.cumsum(dim=-1) + 1e-8).unsqueeze(-1)
    y = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
    return y.transpose(1, 2).reshape(B, T, C)


def mixed_offsets(tokens: int, longest: int) -> list:
    """Offsets of documents of 1 to `longest` tokens (uniform, a fixed draw), `tokens` in all: --packed's mixed rows
    (their GB/s count the documents' own tokens, the padded row's too)."""
    gen, cu = torch.Generator().manual_seed(0), [0]
    while cu[-1] < tokens:
        cu.append(cu[-1] + min(int(torch.randint(1, longest + 1, (1,), generator=gen)), tokens - cu[-1]))
    return cu


def bench(fn, backward: bool, inputs, graph=False):
    """Median ms and peak extra memory (MiB) of fn (forward, or forward + backward); graph: replayed from a CUDA
    graph (no host time; the peak memory is not measured then)."""
    from triton.testing import do_bench, do_bench_cudagraph
    grad = smoke.output_grad(fn) if backward else None

    def run():
        out = fn()
        if backward:
            (out[0] if isinstance(out, tuple) else out).backward(grad)
    try:
        if SMOKE:
            from tost_edge.ops.triton.utils import cpu_timer
            ms = cpu_timer(run)
            for t in inputs:
                t.grad = None
            return ms, float("nan")
        if graph:
            run()   # autotuning and compilation happen outside the capture
            ms = do_bench_cudagraph(run, rep=50, grad_to_none=inputs if backward else None, return_mode="median")
            for t in inputs:
                t.grad = None
            return ms, float("nan")
        ms = do_bench(run, warmup=10, rep=50, grad_to_none=inputs if backward else None, return_mode="median")
        for t in inputs:
            t.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()  # one more call, alone, for the peak memory above what the inputs hold
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return ms, peak
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan"), float("nan")
    except Exception as e:  # e.g. a torch.compile baseline the compiler cannot build: reported, not fatal
        print(f"   failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        for t in inputs:
            t.grad = None
        return float("nan"), float("nan")


def deterministic(fn):
    """fn() under torch.use_deterministic_algorithms(True): the ops plan their deterministic schemes (the backward
    pass keeps the plan its forward pass made)."""
    with deterministic_algorithms():
        return fn()


def with_setting(module, name, value, fn):
    """fn() with module.name = value (the backward pass keeps what its forward pass ran with)."""
    return with_settings(module, {name: value}, fn)


def with_settings(module, settings: dict, fn):
    old = {k: getattr(module, k) for k in settings}
    for k, v in settings.items():
        setattr(module, k, v)
    try:
        return fn()
    finally:
        for k, v in old.items():
            setattr(module, k, v)


# causal TSSA's tiled walks, the settings their sm_90 compiles favour (tokens per forward / backward tile)
CAUSAL_TILED = {"TILED": True, "BWD_TILED": False, "UNROLL": 8, "BWD_UNROLL": 4}   # the H100 sweep's: tiled forward


def tile(autotuner) -> str:
    """The config a TSSA pass's autotuner chose at its last call."""
    c = getattr(autotuner, "best_config", None)
    return f"TILE {c.kwargs.get('TILE')}, {c.num_warps} warps" if c is not None else "not tuned"


def with_graphs(variants: dict, graph: bool):
    """(name, fn, replayed from a CUDA graph?) for every variant, plus "<name>-graph" for Triton's and fla's."""
    for name, fn in variants.items():
        yield name, fn, False
    if graph:
        for name, fn in variants.items():
            if name.startswith("triton") or name == "fla-chunk":
                yield f"{name}-graph", fn, True


def copy_bandwidth(dev: str) -> float:
    """The card's practical ceiling: GB/s of a 2 GiB device-to-device copy (bytes read plus bytes written)."""
    from triton.testing import do_bench
    if SMOKE:                        # the host's memcpy, 16 MiB: a figure for the script's arithmetic, not a card's
        src, dst = torch.ones(2**24, dtype=torch.uint8), torch.empty(2**24, dtype=torch.uint8)
        start = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        return 2 * 10 * 2**24 / (time.perf_counter() - start) / 1e9
    src = torch.empty(2**30, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2**30 / (ms * 1e-3) / 1e9


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def profile(label: str, fn, inputs) -> list[dict]:
    """Device time of every kernel in one forward+backward (mean of 5 after a warm-up), largest first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    grad = smoke.output_grad(fn)

    def run():
        out = fn()
        (out[0] if isinstance(out, tuple) else out).backward(grad)
        for t in inputs:
            t.grad = None
    run()
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU if SMOKE else ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        sync()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        us = e.self_cuda_time_total if us is None else us
        if us > 0:
            rows.append({"kernel": e.key[:60], "calls": e.count // 5, "us": us / 5})
    rows.sort(key=lambda r: -r["us"])
    total = sum(r["us"] for r in rows)
    print(f"-- {label}: {total:.1f} us of kernels per forward+backward")
    for r in rows[:14]:
        print(f"   {r['us']:9.1f} us  x{r['calls']:<3d} {r['kernel']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--quick", action="store_true", help="fewer shapes (the targets' shapes)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile baselines")
    ap.add_argument("--tuned", help="sweep.json from benchmarks/sweep.py: run with its best launch settings")
    ap.add_argument("--profile", action="store_true", help="also list each kernel's device time (torch.profiler)")
    ap.add_argument("--graph", action="store_true", help="also time Triton and fla replayed from a CUDA graph")
    ap.add_argument("--no-other", action="store_true",
                    help="skip the launch scheme and walk the settings did not choose (resident TSSA / fused "
                         "causal TSSA / tiled causal walks)")
    ap.add_argument("--deterministic", action="store_true",
                    help="also time TSSA and causal TSSA under torch.use_deterministic_algorithms(True) (the "
                         "schemes that sum in a fixed order: triton-deterministic rows)")
    ap.add_argument("--packed", action="store_true",
                    help="also time the ops on the batch's sequences packed end to end (cu_seqlens: "
                         "triton-packed rows, the same work as the triton rows), and on B x T tokens of documents of "
                         "1 to T tokens packed into one row (triton-packed-mixed) or, causal ops, padded to T each "
                         "(triton-padded-mixed)")
    ap.add_argument("--ops", default="tssa,causal",
                    help="tssa, causal (causal TSSA and causal linear attention) or both, comma-separated")
    ap.add_argument("--only", metavar="REGEX",
                    help='shapes whose label matches, e.g. "N4096 C384|T4096 H12" (labels: "B64 N4096 C384 H8", '
                         '"B8 T4096 H12 D64")')
    ap.add_argument("--out", default="benchmarks/results")
    smoke.add_flag(ap)
    args = ap.parse_args()
    ops = set(args.ops.split(","))
    if not ops or ops - {"tssa", "causal"}:
        ap.error(f"--ops: expected tssa, causal or tssa,causal, got {args.ops!r}")
    global SMOKE
    SMOKE = smoke.check(args, "benchmarks/kernels.py")
    if args.tuned:
        from tost_edge.ops.triton import settings
        settings.apply(args.tuned)   # checked: a misspelt setting stops here, not after the benchmark
        print(f"launch settings from {args.tuned}: {settings.check(args.tuned)[0]}")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = "cpu" if SMOKE else "cuda"
    name = "CPU smoke check" if SMOKE else torch.cuda.get_device_name()
    bw = card_bandwidth(name)
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:  # fla is optional
        print(f"fla not importable ({e}); its rows are skipped")
        chunk_linear_attn = None
    esize = torch.tensor([], dtype=dt).element_size()
    rows, profiles = [], {}
    copy_gbps = copy_bandwidth(dev)
    print(f"{name}: datasheet HBM {bw:.0f} GB/s; measured device-to-device copy {copy_gbps:.0f} GB/s "
          f"({100 * copy_gbps / bw:.0f}% of the datasheet)", flush=True)

    def record(op, shape, variant, mode, ms, peak, nbytes):
        gbps = nbytes / (ms * 1e-3) / 1e9 if ms == ms else float("nan")
        rows.append({"op": op, "shape": shape, "variant": variant, "mode": mode, "ms": ms, "GB/s": gbps,
                     "roofline": gbps / bw, "of_copy": gbps / copy_gbps, "peak_MiB": peak})
        print(f"{op:22s} {shape:24s} {variant:12s} {mode:8s} {ms:9.3f} ms {gbps:8.0f} GB/s "
              f"{100 * gbps / bw:5.1f}% peak {100 * gbps / copy_gbps:5.1f}% copy {peak:8.0f} MiB", flush=True)

    def time_variants(op, shape, variants, inputs, units, nbytes):
        """Forward and forward+backward of every variant (and its CUDA-graph replay with --graph); units: how many
        times nbytes each mode must move at least (forward, forward+backward)."""
        for variant, fn, graph in with_graphs(variants, args.graph):
            for mode, bwd, k in (("fwd", False, units[0]), ("fwd+bwd", True, units[1])):
                with torch.set_grad_enabled(bwd):
                    ms, peak = bench(fn, bwd, inputs, graph=graph)
                record(op, shape, variant, mode, ms, peak, k * nbytes)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = name.replace(" ", "_")

    def save():  # after every shape, so a run stopped part-way keeps what it measured
        # ratios against the Triton kernel of the same op, shape and mode (same run)
        ref = {(r["op"], r["shape"], r["mode"]): r["ms"] for r in rows if r["variant"] == "triton"}
        for r in rows:
            r["speedup_of_triton"] = r["ms"] / ref.get((r["op"], r["shape"], r["mode"]), float("nan"))
        # causal TSSA against fla's chunk linear attention at the same B, T, H, D
        for ours, theirs in (("triton", "fla-chunk"), ("triton-graph", "fla-chunk-graph")):
            fla = {(r["shape"], r["mode"]): r["ms"] for r in rows if r["variant"] == theirs}
            for r in rows:
                if r["op"] == "causal_tssa" and r["variant"] == ours and (r["shape"], r["mode"]) in fla:
                    r["fla_chunk_ms_same_shape"] = fla[(r["shape"], r["mode"])]
        (out / f"kernels_{tag}_{args.dtype}.json").write_text(json.dumps({"device": name, "hbm_GBps": bw,
                                                                          "copy_GBps": copy_gbps, "dtype": args.dtype,
                                                                          "rows": rows, "profiles": profiles}, indent=2))

    tssa_shapes = [(64, 196, 384, 8), (64, 1024, 384, 8), (64, 4096, 384, 8), (64, 16384, 384, 8),
                   (8, 4096, 768, 16), (8, 65536, 768, 16)]
    causal_shapes = [(T, H) for H in (12, 20) for T in (1024, 4096, 16384, 65536)]
    if args.quick:
        tssa_shapes = [(64, 196, 384, 8), (64, 4096, 384, 8), (8, 65536, 768, 16)]
        causal_shapes = [(4096, 12), (16384, 12), (4096, 20)]
    B_CAUSAL, D_CAUSAL = 8, 64
    if SMOKE:
        tssa_shapes, causal_shapes, B_CAUSAL, D_CAUSAL = [(2, 9, 32, 2)], [(7, 2)], 2, 16
    chosen = re.compile(args.only).search if args.only else (lambda label: True)
    tssa_shapes = [(B, N, C, H) for B, N, C, H in tssa_shapes if "tssa" in ops and chosen(f"B{B} N{N} C{C} H{H}")]
    causal_shapes = [(T, H) for T, H in causal_shapes
                     if "causal" in ops and chosen(f"B{B_CAUSAL} T{T} H{H} D{D_CAUSAL}")]
    if not tssa_shapes and not causal_shapes:
        ap.error(f"no shape left by --ops {args.ops!r} and --only {args.only!r}")
    compile_tssa = torch.compile(official_tssa) if not (args.no_compile or SMOKE) else None
    compile_causal = torch.compile(official_causal_tssa) if not (args.no_compile or SMOKE) else None

    started = time.perf_counter()

    def done(what):   # where a run's minutes go (compiles, autotuning, the eager baseline): a run has a time limit
        print(f"   {what} done at {time.perf_counter() - started:.0f} s", flush=True)

    for B, N, C, H in tssa_shapes:
        try:
            shape = f"B{B} N{N} C{C} H{H}"
            w = torch.randn(B, N, C, device=dev, dtype=dt, requires_grad=True)
            temp = (torch.rand(H, 1, device=dev) + 0.5).to(dt).requires_grad_()
            nb = B * N * C * esize
            other = "passes" if tt.RESIDENT else "resident"   # the scheme the settings did not choose
            variants = {"triton": lambda: tssa(w, temp, H, backend="triton"),
                        "eager": lambda: official_tssa(w, temp, H)}
            if not args.no_other:
                variants[f"triton-{other}"] = lambda: with_setting(tt, "RESIDENT", not tt.RESIDENT,
                                                                   lambda: tssa(w, temp, H, backend="triton"))
                with torch.no_grad():
                    tssa(w, temp, H, backend="triton")
                if not tt.RESIDENT and tt.last_run["forward"] == "resident":   # RESIDENT_ONE_WAVE: the passes too
                    variants["triton-passes"] = lambda: with_setting(tt, "RESIDENT_ONE_WAVE", False,
                                                                     lambda: tssa(w, temp, H, backend="triton"))
            if args.deterministic:
                variants["triton-deterministic"] = lambda: deterministic(lambda: tssa(w, temp, H, backend="triton"))
            extra = []
            if args.packed:     # the batch's B sequences as B sequences of one row: what VARLEN costs
                cu = [i * N for i in range(B + 1)]
                variants["triton-packed"] = lambda: tssa(w.view(1, B * N, C), temp, H, backend="triton",
                                                         cu_seqlens=cu)
                # sequences of 1 to N tokens (images of mixed sizes), B * N in all, in one row (no padded twin:
                # TSSA has no mask, so padding would change each image's statistics)
                mixed = mixed_offsets(B * N, N)
                extra = [torch.randn(1, B * N, C, device=dev, dtype=dt, requires_grad=True)]
                variants["triton-packed-mixed"] = lambda: tssa(extra[0], temp, H, backend="triton", cu_seqlens=mixed)
            if compile_tssa is not None and (B, N) == (64, 4096):
                variants["compile"] = lambda: compile_tssa(w, temp, H)
            time_variants("tssa", shape, variants, [w, temp, *extra], (2, 5), nb)
            for variant in [v for v in variants if v.startswith("triton")]:   # resident falls back where it must
                variants[variant]().sum().backward()
                ran = dict(tt.last_run)
                print(f"   tssa {shape} {variant}: ran {ran['forward']} / {ran['backward']}", flush=True)
                if ran == {"forward": "passes", "backward": "passes"}:   # what the autotuner chose for each pass
                    skip = "out" if tt.OUT_SLICES else "out_slices"          # the output pass's other grid
                    ran["tuned"] = {str(k): tile(tt.KERNELS[k]) for k in tt.KERNELS if k != skip}
                    print(f"   tssa {shape} tiles: {ran['tuned']}", flush=True)
                for r in rows:
                    if (r["op"], r["shape"], r["variant"].removesuffix("-graph")) == ("tssa", shape, variant):
                        r["ran"] = ran
            if args.profile and f"triton-{other}" in variants and other == "resident":
                profiles[f"tssa triton-resident {shape}"] = profile(f"tssa triton-resident {shape}",
                                                                    variants["triton-resident"], [w, temp])
            if args.profile:
                profiles[f"tssa {shape}"] = profile(f"tssa {shape}", variants["triton"], [w, temp])
            del w
        except Exception as e:  # one failing op or shape must not lose the rest of the run
            print(f"tssa {B} {N} {C} {H} failed: {type(e).__name__}: {e}", flush=True)
            torch.cuda.empty_cache()
        save()
        done(f"tssa B{B} N{N} C{C} H{H}")

    for T, H in causal_shapes:
        try:
            B, D = B_CAUSAL, D_CAUSAL
            C = H * D
            shape = f"B{B} T{T} H{H} D{D}"
            w = torch.randn(B, T, C, device=dev, dtype=dt, requires_grad=True)
            temp = (torch.rand(H, 1, device=dev) + 0.5).requires_grad_()
            bias = (0.01 * torch.randn(H, T, 1, device=dev)).requires_grad_()
            nb = B * T * C * esize
            other = "three-pass" if ct.FUSED else "fused"       # the launch scheme the settings did not choose
            variants = {"triton": lambda: causal_tssa(w, temp, bias, H, backend="triton")[0],
                        "eager": lambda: official_causal_tssa(w, temp.to(dt), bias.to(dt), H)}
            if not args.no_other:
                variants[f"triton-{other}"] = lambda: with_setting(
                    ct, "FUSED", not ct.FUSED, lambda: causal_tssa(w, temp, bias, H, backend="triton")[0])
                walk = {"TILED": False, "BWD_TILED": False, "UNROLL": 4}      # the token walk at its H200 best
                walks = (walk, "walk") if ct.TILED else (CAUSAL_TILED, "tiled")
                variants[f"triton-{walks[1]}"] = lambda: with_settings(
                    ct, walks[0], lambda: causal_tssa(w, temp, bias, H, backend="triton")[0])
            # the scheme CHUNKED does not run (a program per group of heads and chunk; the walks), even with
            # --no-other while CHUNKED has not been timed
            variants["triton-walks" if ct.CHUNKED else "triton-chunked"] = lambda: with_setting(
                ct, "CHUNKED", not ct.CHUNKED, lambda: causal_tssa(w, temp, bias, H, backend="triton")[0])
            if H > 16 and ct.BWD_WARPS == 8:
                # rows of 2048 padded elements: the 16-warp backward candidate (docs/kernel_design.md), even with
                # --no-other
                variants["triton-bwd-16-warps"] = lambda: with_setting(
                    ct, "BWD_WARPS", 16, lambda: causal_tssa(w, temp, bias, H, backend="triton")[0])
            if args.deterministic:
                variants["triton-deterministic"] = lambda: deterministic(
                    lambda: causal_tssa(w, temp, bias, H, backend="triton")[0])
            extra = []
            if args.packed:     # the batch's B sequences as B documents of one row: what VARLEN costs
                cu = [i * T for i in range(B + 1)]
                variants["triton-packed"] = lambda: causal_tssa(w.view(1, B * T, C), temp, bias, H, backend="triton",
                                                                cu_seqlens=cu)[0]
                # documents of 1 to T tokens, B * T in all: packed into one row, and padded to T each
                mixed = mixed_offsets(B * T, T)
                extra = [torch.randn(1, B * T, C, device=dev, dtype=dt, requires_grad=True),
                         torch.randn(len(mixed) - 1, T, C, device=dev, dtype=dt, requires_grad=True)]
                variants["triton-packed-mixed"] = lambda: causal_tssa(extra[0], temp, bias, H, backend="triton",
                                                                      cu_seqlens=mixed)[0]
                variants["triton-padded-mixed"] = lambda: causal_tssa(extra[1], temp, bias, H, backend="triton")[0]
            if compile_causal is not None and (T, H) == (4096, 12):
                variants["compile"] = lambda: compile_causal(w, temp.to(dt), bias.to(dt), H)
            time_variants("causal_tssa", shape, variants, [w, temp, bias, *extra], (2, 5), nb)
            if args.profile:
                profiles[f"causal_tssa {shape}"] = profile(f"causal_tssa {shape}", variants["triton"], [w, temp, bias])
                for variant in [v for v in variants if v in ("triton-tiled", "triton-walk", "triton-chunked")]:
                    profiles[f"causal_tssa {variant} {shape}"] = profile(f"causal_tssa {variant} {shape}",
                                                                         variants[variant], [w, temp, bias])
            del w
            q, k_, v = (torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
            la = {"triton": lambda: causal_linear_attention(q, k_, v, backend="triton")[0]}
            # the chunk scheme the settings did not choose (walked chunks / chunks in parallel), even with --no-other
            # while PARALLEL has not been timed
            la["triton-walk" if lat.PARALLEL else "triton-parallel"] = lambda: with_setting(
                lat, "PARALLEL", not lat.PARALLEL, lambda: causal_linear_attention(q, k_, v, backend="triton")[0])
            # q, k, v unbound from one [B, T, 3, H, D] projection, as the linear LM feeds them (read where they lie)
            qkv = torch.randn(B, T, 3, H, D, device=dev, dtype=dt, requires_grad=True)
            la["triton-qkv-views"] = lambda: causal_linear_attention(*qkv.unbind(2), backend="triton")[0]
            # the same projection through the packed form, which writes its gradient where it lies (no stack)
            la["triton-qkvpacked"] = lambda: causal_linear_attention_qkvpacked(qkv, backend="triton")[0]
            extra = []
            if args.packed:
                cu = [i * T for i in range(B + 1)]
                la["triton-packed"] = lambda: causal_linear_attention_qkvpacked(
                    qkv.view(1, B * T, 3, H, D), backend="triton", cu_seqlens=cu)[0]
                mixed = mixed_offsets(B * T, T)
                extra = [torch.randn(1, B * T, 3, H, D, device=dev, dtype=dt, requires_grad=True),
                         torch.randn(len(mixed) - 1, T, 3, H, D, device=dev, dtype=dt, requires_grad=True)]
                la["triton-packed-mixed"] = lambda: causal_linear_attention_qkvpacked(extra[0], backend="triton",
                                                                                      cu_seqlens=mixed)[0]
                la["triton-padded-mixed"] = lambda: causal_linear_attention_qkvpacked(extra[1], backend="triton")[0]
            if chunk_linear_attn is not None:
                la["fla-chunk"] = lambda: chunk_linear_attn(q=F.elu(q) + 1, k=F.elu(k_) + 1, v=v, scale=1.0,
                                                            normalize=True, output_final_state=True)[0]
            time_variants("causal_linear_attention", shape, la, [q, k_, v, qkv, *extra], (4, 11), nb)
            if args.profile:
                for variant, fn in la.items():
                    label = f"causal_linear_attention {variant} {shape}"
                    profiles[label] = profile(label, fn, [q, k_, v, qkv])
            del q, k_, v, qkv
            torch.cuda.empty_cache()
        except Exception as e:  # one failing op or shape must not lose the rest of the run
            print(f"causal {T} {H} failed: {type(e).__name__}: {e}", flush=True)
            torch.cuda.empty_cache()
        save()
        done(f"causal B{B_CAUSAL} T{T} H{H}")

    save()
    print(f"wrote {out / f'kernels_{tag}_{args.dtype}.json'}")


if __name__ == "__main__":
    main()
