"""Launch-parameter sweep of the Triton kernels at the target shapes (GPU): which tile, warps and program count
each kernel family runs best with. The defaults in tost_edge/ops/triton/*.py come from this table.

    python benchmarks/sweep.py --out benchmarks/results
    python benchmarks/sweep.py --ops tssa --out benchmarks/results      # one op; merged into an existing sweep.json
    python benchmarks/sweep.py --ops causal_tssa --heads 20 --out benchmarks/results/h20   # ToST-large widths
    TRITON_INTERPRET=1 python benchmarks/sweep.py --smoke --out /tmp/s    # CPU check of this script

bf16, triton.testing.do_bench medians, forward and forward+backward, and forward+backward replayed from a CUDA graph
(do_bench_cudagraph: what a captured training step pays, without the host's launch time); the graph's
forward+backward chooses (the plain one's host noise is larger than the configs' differences). Every variant is
checked against the default configuration's output before it is timed. The stages start from the defaults (the
winners of earlier sweeps) and try what has not been timed yet; run each op in its own process (--ops) so that a
configuration that never finishes costs only that op's results.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoke  # noqa: E402  (benchmarks/smoke.py)
from tost_edge.ops import causal_linear_attention, causal_tssa, tssa  # noqa: E402
from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, settings, tssa as tt  # noqa: E402


OPS = ("causal_tssa", "causal_linear_attention", "tssa")
MODULES = {"causal_tssa": ct, "causal_linear_attention": la, "tssa": tt}
SMOKE = False   # --smoke: on CPU under the interpreter, tiny shapes, two configs a stage, nothing meaningful timed


def timed(fn, inputs):
    """Forward and forward+backward medians (ms), and forward+backward replayed from a CUDA graph (no host time)."""
    if SMOKE:
        from tost_edge.ops.triton.utils import cpu_timer
        do_bench = do_bench_cudagraph = lambda f, grad_to_none=None, **_: cpu_timer(f)  # noqa: E731
    else:
        from triton.testing import do_bench, do_bench_cudagraph

    grad = smoke.output_grad(fn)

    def both():
        fn().backward(grad)
    fwd = do_bench(lambda: fn(), warmup=5, rep=30, return_mode="median")
    fb = do_bench(both, warmup=5, rep=30, grad_to_none=inputs, return_mode="median")
    try:
        graph = do_bench_cudagraph(both, rep=30, grad_to_none=inputs, return_mode="median")
    except Exception as e:  # reported, not fatal: the plain timings still choose
        print(f"   graph capture failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
        graph = float("nan")
    for t in inputs:
        t.grad = None
    return fwd, fb, graph


def grid(**axes):
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


# Causal TSSA's stages, the defaults first in each. CHUNKED first: the walks (the defaults) or a program per group of
# heads and chunk (one warp each, no barrier; at 64 tokens a chunk, B8 T4096 H12: 1,536 programs a launch, at 32:
# 3,072), then its chunk length and tiles where it won, or the walks' stages where they did: BWD_SPLIT_PI, then the
# tiled backward (21% fewer instructions a tile since the H100 last timed it slower, 0.578 against 0.479 ms).
# The H100 sweep timed the tiled / walked forward and backward, tokens a step, the tiled forward's register cap and
# FUSED; what it left is the warps. The walks are issue- and latency-bound, and fewer warps a program replicate less
# per-head work across threads: the walked backward at 4 warps compiles to 14% fewer instructions an element than at 8,
# the tiled forward at 1 or 2 warps (tiles of 2 or 4 tokens) to 33% / 7% fewer than at 4 (`compile_report.py
# --layouts`, docs/kernel_design.md); smaller programs may then want more of them. (4 warps with steps of 4 tokens is
# left out: at H12 the step is capped to 2, see causal_tssa._tile_tokens.)
# backward: warps a program x tokens a step x register cap (the default first; 128 at 8 warps: 2 programs an SM, 80: 3;
# at 4 warps uncapped 2, 128: 4). Triton 3.6, sm_90, H12: none spills but 4 x 2 capped (16 bytes); compile_report.py
# --layouts. At H20 (--heads 20) a row is 2048 padded elements: 8 warps with steps of 4 spill under the cap and run
# uncapped at 248 registers, one program an SM; 16 warps capped at 128 hold it unspilled (one program, 16 warps).
chunked = lambda best: best.get("CHUNKED", False)  # noqa: E731
walks = lambda best: not best.get("CHUNKED", False)  # noqa: E731
CAUSAL_STAGES = [grid(CHUNKED=[False, True]),
                 ([dict(CHUNKED_TOKENS=n, CHUNKED_TILE=t, CHUNKED_BWD_TILE=bt) for n, t, bt in
                    ((64, 4, 2), (32, 4, 2), (16, 4, 2), (128, 4, 2), (64, 8, 2), (64, 2, 2), (64, 4, 4))], chunked),
                 (grid(CHUNKED_STAGES=[2, 1, 3]), chunked),
                 (grid(BWD_SPLIT_PI=[True, False]), walks),
                 (grid(BWD_TILED=[False, True]), walks),
                 ([dict(BWD_WARPS=nw, BWD_UNROLL=n, BWD_MAXNREG=cap) for nw, n, cap in
                   ((8, 4, 128), (8, 4, 0), (8, 2, 128), (8, 1, 80), (4, 2, 0), (4, 2, 128), (4, 1, 0),
                    (16, 4, 128))], walks),
                 (grid(TILED_WARPS=[0, 2, 1]), walks),
                 (grid(PROGRAMS=[1024, 2048, 4096]), walks),
                 grid(SUFFIX_FP64=[None, False])]   # the device's choice (fp64 on data-centre parts) or fp32 pairs

# TSSA's stages, what has never been timed first (a sweep stopped by its time limit keeps what it measured): the middle
# passes' flat rows, the next tile loaded in registers, the output pass walking slices, launches that overlap (PDL),
# cp.async pipelining, batch elements in L2-sized groups (timed plain only before, where their extra launches cost host
# time); then what earlier sweeps timed: D48 in three parts, the resident kernels each direction, programs a launch.
TSSA_STAGES = [grid(FLAT_MIDDLE=[True, False]), grid(PASS_PREFETCH=[False, True]), grid(OUT_SLICES=[False, True]),
               grid(PDL=[False, True]), grid(PASS_STAGES=[1, 2]), grid(L2_GROUP=[0, 4, 8]), grid(PARTS=[True, False]),
               [{"RESIDENT": False}] + [dict(RESIDENT=True, RESIDENT_TILE=t, RESIDENT_WARPS=nw, RESIDENT_MAXNREG=mx)
                                        for t, nw, mx in ((16384, 4, 96), (16384, 4, 80), (8192, 4, 0), (16384, 4, 0),
                                                          (32768, 8, 128))],
               [{"RESIDENT_BWD": False}] +     # the backward decided apart from the forward
               [dict(RESIDENT_BWD=True, RESIDENT_BWD_TILE=t, RESIDENT_BWD_WARPS=nw, RESIDENT_KEEP_DY=keep,
                     RESIDENT_BWD_MAXNREG=mx)
                for t, nw, keep, mx in ((8192, 4, True, 128), (8192, 4, True, 96), (16384, 8, True, 128),
                                        (8192, 4, False, 96))],
               grid(PROGRAMS=[2048, 4096])]

# Causal linear attention: the chunk schemes first (PARALLEL: the chunks' dots in parallel after walks that carry the
# state only; its backward chunk kernel holds 153 registers a thread at 8 warps, sm_90 bf16: one program an SM; in two
# kernels 107 and 128: two), then the column splits of the walked scheme and the chunk and warps of whichever won
LINEAR_STAGES = [grid(PARALLEL=[False, True]), grid(PARALLEL_BWD_SPLIT=[None, True]), grid(SPLIT=[1, 2, 4]),
                 grid(CHUNK=[32, 64], WARPS=[4, 8])]


def sweep(label, op, stages, fn, inputs, rows, save=lambda best: None):
    """Time each config of each stage; the best of a stage stays set for the next. A stage is a list of configs, or
    (configs, applies) where applies(best settings so far) says whether it runs. Returns the best settings;
    save(best so far) runs after every config, so a sweep stopped part-way keeps what it measured.

    The forward+backward replayed from a CUDA graph chooses (the plain one where capture failed): plain timings
    carry the host's launch time, whose noise is larger than the differences between configs (H100: one config
    measured 0.562 and 1.154 ms plain, 0.481 and 0.485 ms from a graph)."""
    with torch.no_grad():
        ref = fn().float()
    best_cfg = {}
    with settings.using({op: settings.current()[op]}):   # what the stages set is undone at the end
        for stage in stages:
            configs, applies = stage if isinstance(stage, tuple) else (stage, lambda best: True)
            # a stage of the scheme an earlier stage did not choose is left out; the CPU smoke check runs them all,
            # since the interpreter's timings pick either scheme and every stage's code should run there
            if not applies(best_cfg) and not SMOKE:
                continue
            configs = configs[:2] if SMOKE else configs
            timed_rows = []
            for cfg in configs:
                try:
                    with settings.using({op: cfg}):
                        with torch.no_grad():
                            err = ((fn().float() - ref).norm() / ref.norm()).item()
                        fwd, fb, graph = timed(fn, inputs)
                except Exception as e:  # a config that does not compile (registers, shared memory) is reported
                    print(f"{label:34s} {cfg} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
                    continue
                ran = dict(getattr(MODULES[op], "last_run", {}))      # the scheme a module ran, where it can fall back
                row = {"op": label, **best_cfg, **cfg, "fwd_ms": fwd, "fwd_bwd_ms": fb, "fwd_bwd_graph_ms": graph,
                       "rel_err_vs_default": err, **({"ran": ran} if ran else {})}
                rows.append(row)
                timed_rows.append((graph if graph == graph else fb, cfg))
                save({**best_cfg, **min(timed_rows, key=lambda r: r[0])[1]})
                print(f"{label:34s} {str({**best_cfg, **cfg}):72s} fwd {fwd:7.3f} ms  fwd+bwd {fb:7.3f} ms  "
                      f"(bwd {fb - fwd:7.3f})  graph fwd+bwd {graph:7.3f}  err {err:.1e}"
                      + (f"  ran {ran['forward']}/{ran['backward']}" if ran else ""), flush=True)
            if timed_rows:
                best_cfg.update(min(timed_rows, key=lambda r: r[0])[1])
                settings.apply({op: best_cfg})
    return best_cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--heads", type=int, default=12,
                    help="heads of the causal ops' shape, B8 T4096 D64: 12 (ToST-base, the default) or 20 (ToST-large)")
    smoke.add_flag(ap)
    args = ap.parse_args()
    ops = [op for op in args.ops.split(",") if op]
    if args.heads < 1:
        ap.error(f"--heads: expected a positive number of heads, got {args.heads}")
    if not ops or set(ops) - set(OPS):
        ap.error(f"--ops: expected a comma-separated subset of {','.join(OPS)}, got {args.ops!r}")
    global SMOKE
    SMOKE = smoke.check(args, "benchmarks/sweep.py")
    dev, dt = ("cpu", torch.float32) if SMOKE else ("cuda", torch.bfloat16)
    device_name = "CPU smoke check" if SMOKE else torch.cuda.get_device_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else {}
    if earlier.get("device", device_name) != device_name:
        sys.exit(f"{out / 'sweep.json'} holds a sweep on {earlier['device']}, not {device_name}: choose another --out")
    named = lambda op: settings.ALIASES.get(op, op)  # noqa: E731  (files that call an op by its earlier key)
    best = {named(op): cfg for op, cfg in earlier.get("best", {}).items()}
    rows = [r for r in earlier.get("rows", []) if named(r["op"].split()[0]) not in ops]   # an op swept again
                                                                                          # replaces its rows

    def save():  # after every config, so a run stopped part-way keeps what it measured
        (out / "sweep.json").write_text(json.dumps({"device": device_name, "best": best,
                                                   "rows": rows}, indent=2))

    def saver(op):
        def save_op(best_so_far):
            best[op] = best_so_far
            save()
        return save_op

    B, T, H, D = (2, 9, 2, 16) if SMOKE else (8, 4096, args.heads, 64)
    if "causal_tssa" in ops:
        w = torch.randn(B, T, H * D, device=dev, dtype=dt, requires_grad=True)
        temp = (torch.rand(H, device=dev) + 0.5).requires_grad_()
        bias = (0.01 * torch.randn(H, T, device=dev)).requires_grad_()
        best["causal_tssa"] = sweep(f"causal_tssa B{B} T{T} H{H} D{D}", "causal_tssa",
                                    CAUSAL_STAGES,
                                    lambda: causal_tssa(w, temp, bias, H, backend="triton")[0], [w, temp, bias], rows,
                                    saver("causal_tssa"))
        save()
        del w

    if "causal_linear_attention" in ops:
        op = "causal_linear_attention"
        q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        best[op] = sweep(f"{op} B{B} T{T} H{H} D{D}", op, LINEAR_STAGES,
                         lambda: causal_linear_attention(q, k, v, backend="triton")[0], [q, k, v], rows, saver(op))
        save()
        del q, k, v

    if "tssa" in ops:
        B2, N2, C2, H2 = (2, 9, 32, 2) if SMOKE else (64, 4096, 384, 8)
        w2 = torch.randn(B2, N2, C2, device=dev, dtype=dt, requires_grad=True)
        temp2 = (torch.rand(H2, device=dev) + 0.5).requires_grad_()
        best["tssa"] = sweep(f"tssa B{B2} N{N2} C{C2} H{H2}", "tssa",
                             TSSA_STAGES,
                             lambda: tssa(w2, temp2, H2, backend="triton"), [w2, temp2], rows, saver("tssa"))
        save()
    print("best settings (fwd+bwd):", json.dumps(best))


if __name__ == "__main__":
    main()
