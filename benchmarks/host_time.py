"""Where the host's time goes in an eager forward+backward of each op (GPU): what the plain timings pay beyond the
kernels.

    python benchmarks/host_time.py --out results/          # writes results/host_time.json
    HOST=1 bash benchmarks/run_gpu.sh                        # the same, in the GPU script
    TRITON_INTERPRET=1 python benchmarks/host_time.py --smoke --out /tmp/h   # CPU check of this script
    python benchmarks/host_time.py --stand-in --out results/   # no GPU: Triton's launch path against a stand-in
                                                              # driver (benchmarks/stand_in), kernels built for sm_90

Per op at its benchmark shape (profile_ncu.call: TSSA B64 N4096 C384 H8, the causal ops B8 T4096 H12 D64, bf16):
- host µs a call: the time Python takes to queue one forward+backward (the GPU still busy with earlier calls, so
  nothing waits for it), against the GPU's µs a call (the same calls' wall time once the queue has drained). Where the
  host's time is the larger, the plain timings measure the host, not the kernels. Then the host µs again with the
  Triton kernels replaced by stubs that launch nothing: the difference is Triton's launch path.
- the CUDA runtime and driver calls a step makes (torch.profiler): a synchronising one there is a wait for the GPU
  inside the step; cuLaunchKernelEx's time is the driver's share of the Triton launches.
- the functions that host time is spent in (cProfile, own time a call, the largest first; Python runs slower under
  the profiler, so these add up to more than the host's time above) and its sum by package (tost_edge,
  triton, torch, the rest), so that the heaviest part, the ops' host code, autograd's or Triton's launch path, shows
  by name.

With --stand-in the same runs on a machine without a GPU, CPU tensors at the same shapes, each launch going through
Triton's real path (binder, kernel cache, its compiled C launcher) to a stand-in libcuda that returns at once: the
host's µs without a GPU's driver (a few µs a launch more there) and with torch's own kernels run on the CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoke  # noqa: E402  (benchmarks/smoke.py)
from profile_ncu import call  # noqa: E402  (benchmarks/profile_ncu.py: the op at its benchmark shape)

OPS = ("causal_tssa", "causal_linear_attention", "tssa")   # TSSA last: its first call may autotune (a minute)


class NoLaunch:
    """A Triton kernel that launches nothing (kernel[grid](*args) returns at once; warmup compiles nothing)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None

    def warmup(self, *args, **kwargs):
        return None


@contextlib.contextmanager
def no_launches():
    """The ops' Triton kernels replaced by NoLaunch: what is left of a call's host time is the ops' own Python,
    autograd's and torch's (its fills); the outputs are left as allocated."""
    from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, linear_attention_chunks as lch, \
        tssa as tt
    saved = [(tt.KERNELS, k, v) for k, v in tt.KERNELS.items()]
    for module in (tt, ct, la, lch, tt.resident, ct.chunks):
        saved += [(vars(module), k, v) for k, v in vars(module).items()
                  if type(v).__name__ in ("JITFunction", "InterpretedFunction", "Autotuner")]
    try:
        for where, k, _ in saved:
            where[k] = NoLaunch()
        yield
    finally:
        for where, k, v in saved:
            where[k] = v


def host_and_wall(step, calls: int, sync) -> tuple[float, float]:
    """µs a call that Python takes to queue `step` (the GPU still busy with the calls before: nothing waits), and
    µs a call of wall time once the queue has drained."""
    sync()
    host = 0.0
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        step()
        host += time.perf_counter() - t0
    sync()
    return 1e6 * host / calls, 1e6 * (time.perf_counter() - start) / calls


def driver_calls(step, calls: int) -> list[dict]:
    """CUDA runtime and driver calls of a forward+backward as torch.profiler (CUPTI) records them: name, calls and
    host µs a step, the most time first. A synchronising call among them (cudaStreamSynchronize,
    cudaDeviceSynchronize, a blocking cudaMemcpy) is a wait for the GPU inside the step; cuLaunchKernelEx's time is
    the driver's share of each Triton launch."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                step()
        rows = [{"call": e.key, "calls_per_step": e.count / calls, "us_per_step": e.cpu_time_total / calls}
                for e in prof.key_averages() if re.match(r"cu(da)?[A-Z]", e.key)]
    except Exception as e:      # reported, not fatal: the timings above stand
        print(f"    CUDA calls not recorded: {type(e).__name__}: {str(e)[:120]}", flush=True)
        return []
    return sorted(rows, key=lambda r: -r["us_per_step"])


def measure(fn, inputs, calls: int, sync, launches=None) -> dict:
    """Host and wall µs per forward+backward over `calls` calls queued back to back, the host µs with the Triton
    launches stubbed, and where cProfile finds the time; launches: counts the kernels launched (stand-in driver)."""
    dy = smoke.output_grad(fn)

    def step():
        out = fn()
        out.backward(dy)
        for t in inputs:
            t.grad = None
    for _ in range(3):           # autotuning and compiles
        step()
    before = launches() if launches else 0
    host, wall = host_and_wall(step, calls, sync)
    per_call = (launches() - before) / calls if launches else None
    with no_launches():
        stubbed, _ = host_and_wall(step, calls, sync)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        step()
    profile.disable()
    sync()
    stats = pstats.Stats(profile)
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:15]     # (file, line, name) -> (cc, nc, tt, ct, _)
    packages = {}
    for (f, _, _), (_, _, tt, _, _) in stats.stats.items():
        package = next((p for p in ("tost_edge", "triton", "torch") if f"/{p}/" in f), "other (builtins, C calls)")
        packages[package] = packages.get(package, 0.0) + 1e6 * tt / calls
    on_gpu = launches is None and torch.cuda.is_available()
    return {"host_us": host, "wall_us": wall, "host_us_launches_stubbed": stubbed, "triton_launches": per_call,
            "driver_calls": driver_calls(step, min(calls, 10)) if on_gpu else [], "own_us_by_package": packages,
            "top": [{"function": f"{Path(f).name}:{line} {name}", "calls_per_step": nc / calls,
                     "own_us_per_step": 1e6 * tt / calls, "cumulative_us_per_step": 1e6 * ct / calls}
                    for (f, line, name), (_, nc, tt, ct, _) in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--calls", type=int, default=50,
                    help="forward+backward calls queued back to back (few enough that the launch queue never fills)")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for host_time.json")
    ap.add_argument("--stand-in", action="store_true",
                    help="no GPU: CPU tensors, launches through Triton's path to a stand-in driver (see above)")
    ap.add_argument("--small", action="store_true", help="with --stand-in: the smoke check's tiny shapes")
    smoke.add_flag(ap)
    args = ap.parse_args()
    launches = None
    if args.stand_in:
        import stand_in                                  # benchmarks/stand_in
        launches, small = stand_in.activate(), args.small
        dev, dt, sync, device = "cpu", torch.bfloat16, (lambda: None), f"stand-in driver as {stand_in.H100['name']}"
    else:
        small = smoke.check(args, "benchmarks/host_time.py")
        dev, dt = ("cpu", torch.float32) if small else ("cuda", torch.bfloat16)
        sync = (lambda: None) if small else torch.cuda.synchronize
        device = "CPU smoke check" if small else torch.cuda.get_device_name()
    calls = 2 if small and not args.stand_in else args.calls
    results = {"device": device, "ops": {}}
    for op in args.ops:
        fn, inputs = call(op, dev, dt, small)
        r = measure(fn, inputs, calls, sync, launches)
        results["ops"][op] = r
        bound = "host-bound" if r["host_us"] > 0.9 * r["wall_us"] else "GPU-bound"
        where = f"{r['triton_launches']:.0f} Triton launches" if launches else f"wall {r['wall_us']:.0f} µs ({bound})"
        print(f"{op}: host {r['host_us']:.0f} µs a forward+backward ({r['host_us_launches_stubbed']:.0f} with the "
              f"Triton launches stubbed), {where}", flush=True)
        packages = sorted(r["own_us_by_package"].items(), key=lambda x: -x[1])
        print("    under cProfile (which slows Python ~2-3x), own time by package: "
              + ", ".join(f"{p} {us:.0f} µs" for p, us in packages))
        if r["driver_calls"]:
            print("    CUDA calls a step: " + ", ".join(
                f"{c['call']} x{c['calls_per_step']:.0f} {c['us_per_step']:.0f} µs" for c in r["driver_calls"][:8]))
        for row in r["top"][:10]:
            print(f"    {row['own_us_per_step']:8.1f} µs own  {row['cumulative_us_per_step']:8.1f} µs with callees  "
                  f"x{row['calls_per_step']:<5.0f} {row['function']}", flush=True)
        del fn, inputs
        args.out.mkdir(parents=True, exist_ok=True)       # after each op: a run stopped by its time limit keeps these
        (args.out / "host_time.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
