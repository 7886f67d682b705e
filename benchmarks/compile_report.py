"""Compile the Triton kernels for a GPU target without a GPU and report what the compiler made of them:
registers, spill (local memory) bytes, shared memory and SASS instruction counts, at the benchmark shapes.

    python benchmarks/compile_report.py            # sm_90 (H100 / H200)
    python benchmarks/compile_report.py --arch 87  # Orin
    python benchmarks/compile_report.py --quick    # one launch setting per kernel (what the tests run)
    python benchmarks/compile_report.py --only "tiled" --dump /tmp/ir   # kernels whose label matches; TTGIR and SASS
    python benchmarks/compile_report.py --layouts  # causal TSSA's walks over warps x tokens a step: cost per element

Uses Triton's own ptxas and cuobjdump; no CUDA device or driver is needed. "loops" lists each loop body's SASS and
barrier count: one trip of a walk loop covers UNROLL tokens (the tile, or the unrolled step) per thread.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import itertools
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, tssa as tt  # noqa: E402
from tost_edge.ops.triton import causal_tssa_chunks as cch, causal_tssa_tiles as ctiles  # noqa: E402
from tost_edge.ops.triton import linear_attention_chunks as lch  # noqa: E402
from tost_edge.ops.triton import tssa_resident as tr  # noqa: E402
from tost_edge.ops.triton.utils import FAST_FP64, SPILL, launch_options  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
UNREAD = []                                                               # warned once
CUOBJDUMP = os.environ.get("TRITON_CUOBJDUMP_PATH") or BIN / "cuobjdump"   # as Triton's knob: a newer CUDA's for
                                                                          # targets its own predates (sm_110 in 3.6)


def tile_layout(ttgir: str) -> str:
    """For kernels on [tokens, heads, channels] tiles: whether every scan over the tokens runs with the tokens in
    each thread (no lane or warp on that axis), and how many whole tiles are moved between layouts (through shared
    memory, a barrier each)."""
    layouts = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^(#blocked\d*) = #ttg.blocked<\{sizePerThread = \[[\d, ]+\], threadsPerWarp = \[(\d+), \d+, \d+\], "
        r"warpsPerCTA = \[(\d+), \d+, \d+\]", ttgir, re.M)}
    if "tt.scan" not in ttgir:        # no cumulative sums: report tiles of 1024 elements or more moved, if any tile
        big = [m for m in re.findall(r"convert_layout %\S+ : tensor<([\dx]+)x[a-z]", ttgir)
               if math.prod(int(n) for n in m.split("x")) >= 1024]
        return f"  tiles moved {len(big)}" if re.search(r"tensor<\d+x\d+x\d+x", ttgir) else ""
    scans = re.findall(r'"tt.scan".*?\}\) : \(tensor<\d+x\d+x(\d+)xf\d+, (#blocked\d*)>\) ->', ttgir, re.S)
    scans = [lay for last, lay in scans if int(last) > 1]
    if not scans:
        return ""
    split = [lay for lay in scans if layouts.get(lay, (0, 0)) != (1, 1)]
    moved = len(re.findall(r"convert_layout %\S+ : tensor<\d+x\d+x(?!1x)\d+x", ttgir))
    return f"  tiles: tokens {'split' if split else 'in-thread'}, {moved} moved"


FP64_OPS = re.compile(r"(@!?U?P\w+\s+)?(DADD|DMUL|DFMA|DSETP|DMNMX|F2F\S*F64)")


def loop_bodies(sass: str, smallest: int = 60):
    """(instructions, barriers, fp64 instructions) of every loop body in the SASS (a branch back to a lower address)
    of more than `smallest` instructions: what one trip of a token walk or tile loop costs each thread. fp64 counts
    what runs on the fp64 pipe (arithmetic and conversions to or from fp64): half the fp32 rate on data-centre parts,
    1/32 to 1/64 on the others. Loops that poll memory with acquire loads (the decoupled look-back's) are left out."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", sass, re.M)]
    at = {a: i for i, (a, _) in enumerate(ins)}
    bodies = []
    for i, (a, txt) in enumerate(ins):
        m = re.search(r"BRA\s+0x([0-9a-f]+)", txt)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in at:
            body = [t for _, t in ins[at[int(m.group(1), 16)]:i + 1]]
            if len(body) > smallest and not any(t.startswith("LDG") and ".STRONG.GPU" in t for t in body):
                bodies.append((len(body), sum("BAR.SYNC" in t for t in body),
                               sum(bool(FP64_OPS.match(t)) for t in body)))
    return bodies


ONLY = None   # regex: report only the kernels whose label matches (--only)
LOOP_MIN = 60  # loops of fewer SASS instructions are not reported (--layouts counts every walk loop: 20)
DUMP = None   # folder for each kernel's TTGIR and SASS (--dump)


def report(label, fn, sig, const, arch, num_warps=4, odd=(), maxnreg=0):
    """Compile fn as a launch at the benchmark shapes would: Triton specialises pointers (torch allocations are
    16-byte aligned) and integers divisible by 16 as such, which decides vector widths and layouts; odd names the
    integer arguments that are not."""
    if ONLY and not re.search(ONLY, label):
        return None
    defaults = {k: v.default for k, v in inspect.signature(fn.fn).parameters.items()     # as a launch leaves them
                if v.default is not inspect.Parameter.empty and k not in sig}
    const = {**defaults, **const}
    div16 = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, t in sig.items()
             if (t.startswith("*") or t.startswith("i")) and k not in odd}
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in const}}, constexprs=const, attrs=div16)
    options = launch_options(num_warps, maxnreg)   # as launches ask
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as d:
        cubin = Path(d) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        dump = lambda what: subprocess.run([CUOBJDUMP, what, cubin], capture_output=True,  # noqa: E731
                                           text=True).stdout
        usage, sass = dump("--dump-resource-usage"), dump("--dump-sass")
    if DUMP:
        name = re.sub(r"\W+", "_", label)
        stem = Path(DUMP) / f"{name}_warps{num_warps}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".ttgir").write_text(k.asm["ttgir"])
        stem.with_suffix(".sass").write_text(sass)
    grab = lambda key: int(m.group(1)) if (m := re.search(rf"{key}:(\d+)", usage)) else -1  # noqa: E731
    instr = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", ln)]
    if not instr and not UNREAD:
        UNREAD.append(arch)
        print(f"(no SASS counts: {CUOBJDUMP} cannot disassemble sm_{arch}; TRITON_CUOBJDUMP_PATH can name a newer "
              "CUDA's cuobjdump)", file=sys.stderr, flush=True)
    ops = {}
    for ln in instr:
        op = ln.split("*/", 1)[1].strip().split()[0].split(".")[0]
        op = ln.split("*/", 1)[1].strip().split()[1].split(".")[0] if op.startswith("@") else op
        ops[op] = ops.get(op, 0) + 1
    top = ", ".join(f"{o} {n}" for o, n in sorted(ops.items(), key=lambda x: -x[1])[:8])
    layout = tile_layout(k.asm["ttgir"])
    loops = " ".join(f"{n}/{bars}" for n, bars, _ in loop_bodies(sass, LOOP_MIN))
    layout += f"  loops (SASS/barriers) {loops}" if loops else ""
    print(f"{label:34s} warps {num_warps}  regs {grab('REG'):3d}  stack {grab('STACK'):5d}  "
          f"shared {grab('SHARED'):6d}  sass {len(instr):5d}  bar {ops.get('BAR', 0):3d}  [{top}]{layout}", flush=True)
    return {"regs": grab("REG"), "shared": max(grab("SHARED"), 0), "stack": grab("STACK"),
            "loops": loop_bodies(sass, LOOP_MIN)}


CARDS = {90: ("H100 SXM", 132, 2048, 228 * 1024, 32), 87: ("Orin", 16, 1536, 164 * 1024, 16)}


def resident_note(usage, warps, tokens, N, arch, held_bytes):
    """Programs per SM of a resident kernel (tssa_resident's occupancy rule), the bytes of slices an SM then holds
    (what bounds the kernel's bandwidth: bytes in flight over the time a program holds them, two waits), and
    whether a batch element's N / tokens programs are all held at once on a card of that architecture."""
    if arch not in CARDS or usage is None:
        return
    name, sms, threads, shared, programs = CARDS[arch]
    per_sm = tr.programs_per_sm(usage["regs"], warps, usage["shared"], 65536, threads, shared, programs)
    NS = -(-N // tokens)
    verdict = "resident" if NS <= per_sm * sms else "too many: runs the passes"
    print(f"{'':34s} {per_sm} programs per SM holding {per_sm * held_bytes // 1024} KB of slices; N{N}: {NS} "
          f"programs a batch element, {name} holds {per_sm * sms} ({verdict})", flush=True)


def causal_sigs(t: str):
    """Signatures of the fused causal TSSA kernels (forward, backward) with w, y, gy, dw of type t."""
    f32 = "*fp32"
    fwd = dict(w=t, temp=f32, bias=f32, pos="*i64", S0=f32, A0=f32, P0=f32, pi=f32, y=t, S_start=f32, AP_start=f32,
               S_T=f32, A_T=f32, P_T=f32, sync="*i32", part=f32, T="i32", tmax="i32", per="i32", NS="i32", cu="*i32")
    bwd = dict(w=t, gy=t, pi_in=f32, S_start=f32, AP_start=f32, temp=f32, bias=f32, pos="*i64", gS_T=f32, gA_T=f32,
               gP_T=f32, ge_io=f32, gpi_io=f32, gtemp=f32, gbias=f32, dw=t, gS0=f32, gA0=f32, gP0=f32, sync="*i32",
               part=f32, part64="*fp64", T="i32", tmax="i32", per="i32", NS="i32", cu="*i32")
    return fwd, bwd


def suffix_pair(arch: int) -> bool:
    """Whether launches on this architecture sum the causal backward's d S in fp32 pairs (ct.SUFFIX_FP64)."""
    return not (ct.SUFFIX_FP64 if ct.SUFFIX_FP64 is not None else divmod(arch, 10) in FAST_FP64)


def layouts(arch: int, heads=(12, 20), warps=(1, 2, 4, 8), tokens=(1, 2, 4, 8), pair: bool | None = None) -> list:
    """Causal TSSA's fused kernels (bf16, D64) walked (TILED off) or tiled, over warps a program x tokens a step or
    tile: what one token costs. The walks are latency- and issue-bound (docs/kernel_design.md), so the figures that
    decide are the SASS a padded element of the three walk loops takes (thread instructions: a loop trip's SASS x the
    program's threads / the tokens and padded channels it covers), the barriers a token waits at, and how many
    programs an SM holds (spill: bytes of local memory a thread). The backward compiles under BWD_MAXNREG ("cap"),
    or uncapped where the cap spills over 16 bytes a thread, as its launches do, and sums d S in fp64 or in fp32
    pairs (pair; None: as launches decide for the architecture, ct.SUFFIX_FP64). Returns the rows."""
    global LOOP_MIN
    LOOP_MIN, rows = 20, []
    pair = suffix_pair(arch) if pair is None else pair
    print(f"the backward's d S sums: {'fp32 pairs' if pair else 'fp64'}")
    _, _, threads, shared, blocks = CARDS.get(arch, CARDS[90])
    print(f"{'kernel':9s} {'H':>3s} {'scheme':6s} {'warps':>5s} {'tokens':>6s} {'cap':>4s} {'regs':>4s} {'spill':>5s} "
          f"{'per SM':>6s} {'SASS/elem':>9s} {'bar/token':>9s} {'fp64/elem':>9s}", flush=True)
    fwd_sig, bwd_sig = causal_sigs("*bf16")
    for direction in ("fwd", "bwd"):
        for H in heads:
            HP = triton.next_power_of_2(H)
            for tiled in (False, True):
                wider = (16,) if direction == "bwd" and not tiled else ()   # H20's rows at 4 elements a thread
                for nw in warps + wider:
                    for bt in tokens:
                        if direction == "bwd" and bt > 4:       # the backward holds ~3x the forward's tiles
                            continue
                        const = {"C": H * 64, "D": 64, "H": H, "HP": HP, "BD": 64, "BT": bt, "TILED": tiled,
                                 "BOUNDED": True, "PREFIX": True,
                                 **({"PI_STORED": True, "PAIR": pair, "SPLIT_PI": ct.BWD_SPLIT_PI}
                                    if direction == "bwd" else {"P_CHANNELS": tiled and ctiles.p_channels(nw)})}
                        kernel, sig = (ct._f_fused, fwd_sig) if direction == "fwd" else (ct._b_fused, bwd_sig)
                        label = f"causal {direction} {'tiled' if tiled else 'walk'} H{H} warps{nw} tokens{bt}"
                        if ONLY and not re.search(ONLY, label):
                            continue
                        cap = ct.BWD_MAXNREG if direction == "bwd" else 0   # as launches run it (utils.unspilled)
                        with contextlib.redirect_stdout(io.StringIO()):
                            usage = report(label, kernel, sig, const, arch, nw, maxnreg=cap)
                            if cap and usage["stack"] > SPILL:
                                cap, usage = 0, report(label, kernel, sig, const, arch, nw)
                        loops = usage["loops"]
                        per_sm = tr.programs_per_sm(usage["regs"], nw, usage["shared"], 65536, threads, shared, blocks)
                        # three walk loops (stages), one trip each per step; where the compiler unrolled a loop
                        # itself (a main loop and a remainder) a trip's tokens are unknown: not counted
                        per_elem = 32 * nw / (bt * HP * 64)
                        sass = sum(n for n, _, _ in loops) * per_elem if len(loops) == 3 else math.nan
                        bars = sum(b for _, b, _ in loops) / bt if len(loops) == 3 else math.nan
                        fp64 = sum(f for _, _, f in loops) * per_elem if len(loops) == 3 else math.nan
                        row = dict(kernel=direction, H=H, scheme="tiled" if tiled else "walk", warps=nw, tokens=bt,
                                   cap=cap, regs=usage["regs"], spill=usage["stack"], per_sm=per_sm, loops=len(loops),
                                   sass_per_element=round(sass, 1), barriers_per_token=round(bars, 2),
                                   fp64_per_element=round(fp64, 2))
                        rows.append(row)
                        note = "" if len(loops) == 3 else f"  ({len(loops)} loops: the compiler unrolled a walk)"
                        print(f"{direction:9s} {H:3d} {row['scheme']:6s} {nw:5d} {bt:6d} {cap:4d} {usage['regs']:4d} "
                              f"{usage['stack']:5d} {per_sm:6d} {sass:9.1f} {bars:9.2f} {fp64:9.2f}{note}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="one launch setting per kernel")
    ap.add_argument("--only", help="regex: report only the kernels whose label matches")
    ap.add_argument("--dump", help="folder to write each reported kernel's TTGIR and SASS into")
    ap.add_argument("--layouts", action="store_true",
                    help="causal TSSA's walks over warps x tokens a step, walked and tiled: SASS per element, barriers "
                         "per token, programs per SM (the settings WARPS / BWD_WARPS, TILED_WARPS, UNROLL, BWD_UNROLL)")
    args = ap.parse_args()
    global ONLY, DUMP
    ONLY, DUMP = args.only, args.dump
    print(f"Triton {triton.__version__}, sm_{args.arch}", flush=True)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("compile_report.py compiles for a GPU target: run it without TRITON_INTERPRET=1")
    a = args.arch
    if args.layouts:
        layouts(a)
        return
    f32, bf = "*fp32", "*bf16"
    # TSSA, B64 N4096 C384 H8 (D48)
    tc = {"C": 384, "D": 48, "H": 8, "HP": 8, "BD": 64}
    part, NP = tt._parts(tc["D"], tc["BD"])                      # the passes' default: three parts of 16 (PARTS)
    heads = ((f" parts{NP}" if NP > 1 else "", {**tc, "BD": part, "NP": NP}),)
    heads += () if args.quick or NP == 1 else ((" padded", {**tc, "NP": 1}),)
    # every tile and warps the passes' autotuner may pick (tssa._configs): a larger tile holds more a thread
    tiles = [(c.kwargs["TILE"], c.num_warps) for c in tt._configs()]
    # and each pass loading its next tile ahead into registers (PASS_PREFETCH; the third forward pass only where it
    # walks slices, OUT_SLICES), and with that, on sm_90 and later, launched while the pass before finishes (PDL)
    ahead = [(False, False), (True, False)] + ([(True, True)] if a >= 90 else [])
    fwd_sig = dict(w=bf, temp=f32, S=f32, A=f32, P=f32, pi=f32, y=bf, N="i32", NB="i32")
    bwd_sig = dict(w=bf, gy=bf, pi_in=f32, temp=f32, S=f32, A=f32, P=f32, G=f32, dS=f32, r_io=f32, ge_io=f32,
                   gtemp=f32, dw=bf, N="i32", NB="i32")
    for tile, nw in ((2048, 8),) if args.quick else tiles:
        for (label, pc), (pf, pdl) in itertools.product(heads, ahead):
            label += " prefetch" * pf + " pdl" * pdl
            for p in (1, 2, 3):
                report(f"tssa pass{p} tile{tile}{label}", tt._fwd, fwd_sig,
                       {**pc, "TILE": tile, "PASS": p, "REV": p == 2 and tt.PINGPONG, "STAGES": tt.PASS_STAGES,
                        "PREFETCH": pf, "FLAT": tt._flat_middle(pc["NP"]) and p == 2, "PDL": pdl, "DET": False},
                       a, nw)
            for st in (1, 2, 3):
                report(f"tssa bwd{st} tile{tile}{label}", tt._bwd, bwd_sig,
                       {**pc, "PI_STORED": True, "TILE": tile, "STAGE": st, "REV": st == 2 and tt.PINGPONG,
                        "STAGES": tt.PASS_STAGES, "PREFETCH": pf, "FLAT": tt._flat_middle(pc["NP"]) and st == 2,
                        "PDL": pdl, "ANCHOR": tt._anchored(tile, nw), "DET": False}, a, nw)
    pc = heads[0][1]
    # under torch.use_deterministic_algorithms: the passes that sum across slices, each slice into a row of its own
    for p in (1, 2):
        report(f"tssa pass{p} tile2048 deterministic", tt._fwd, fwd_sig,
               {**pc, "TILE": 2048, "PASS": p, "REV": False, "STAGES": 1, "PREFETCH": False,
                "FLAT": tt._flat_middle(pc["NP"]) and p == 2, "PDL": False, "DET": True}, a, 4)
    for st in (1, 2):
        report(f"tssa bwd{st} tile2048 deterministic", tt._bwd, bwd_sig,
               {**pc, "PI_STORED": True, "TILE": 2048, "STAGE": st, "REV": False, "STAGES": 1, "PREFETCH": False,
                "FLAT": tt._flat_middle(pc["NP"]) and st == 2, "PDL": False, "ANCHOR": tt._anchored(2048, 4),
                "DET": True}, a, 4)
    # packed sequences (cu_seqlens): each program's sequence offsets its pointers and ends its slice
    for p in (1, 2, 3):
        report(f"tssa pass{p} tile2048 packed", tt._fwd, {**fwd_sig, "cu": "*i32"},
               {**pc, "TILE": 2048, "PASS": p, "REV": p == 2 and tt.PINGPONG, "STAGES": tt.PASS_STAGES,
                "PREFETCH": False, "FLAT": tt._flat_middle(pc["NP"]) and p == 2, "PDL": False, "DET": False,
                "VARLEN": True}, a, 8)
    for st in (1, 2, 3):
        report(f"tssa bwd{st} tile2048 packed", tt._bwd, {**bwd_sig, "cu": "*i32"},
               {**pc, "PI_STORED": True, "TILE": 2048, "STAGE": st, "REV": st == 2 and tt.PINGPONG,
                "STAGES": tt.PASS_STAGES, "PREFETCH": False, "FLAT": tt._flat_middle(pc["NP"]) and st == 2,
                "PDL": False, "ANCHOR": tt._anchored(2048, 8), "DET": False, "VARLEN": True}, a, 8)
    report("tssa persistent fwd", tt._fwd_persistent, dict(w=bf, temp=f32, S=f32, A=f32, P=f32, pi=f32, y=bf,
           sync="*i32", N="i32", B="i32", NI="i32", per="i32"), {**pc, "TILE": tt.QUEUE_TILE, "LAG": 2}, a,
           tt.QUEUE_WARPS)
    report("tssa persistent bwd", tt._bwd_persistent, dict(w=bf, gy=bf, pi_in=f32, temp=f32, S=f32, A=f32, P=f32,
           G=f32, dS=f32, gtemp=f32, r_io=f32, ge_io=f32, dw=bf, sync="*i32", N="i32", B="i32", NI="i32", per="i32"),
           {**pc, "PI_STORED": True, "TILE": tt.QUEUE_TILE, "LAG": 2}, a, tt.QUEUE_WARPS)
    # resident TSSA: the slice held in registers across the waits; registers decide how many programs an SM holds.
    # D48 is held as three parts of 16 channels (tr.parts): rows of 384 elements, nothing padded
    NP, BDP = tr.parts(tc["D"])
    row = tc["HP"] * BDP * NP
    rc = {**tc, "BD": BDP, "NP": NP, "PACKED": True}
    bn = lambda tile: tr.slices(4096, tile, row)[0]  # noqa: E731
    fwd_res = ((tt.RESIDENT_TILE, tt.RESIDENT_WARPS, tt.RESIDENT_MAXNREG),) if args.quick else (
        (8192, 4, 0), (16384, 4, 0), (16384, 4, 96), (16384, 4, 80), (16384, 8, 0), (32768, 8, 128),
        (32768, 16, 0))                                                      # (tile, warps, register cap)
    bwd_res = ((tt.RESIDENT_BWD_TILE, tt.RESIDENT_BWD_WARPS, tt.RESIDENT_KEEP_DY, tt.RESIDENT_BWD_MAXNREG),) \
        if args.quick else ((8192, 4, True, 0), (8192, 4, True, 128), (8192, 4, True, 96), (16384, 8, True, 0),
                            (16384, 8, True, 128), (16384, 16, True, 0), (8192, 4, False, 0), (8192, 4, False, 96))
    cap = lambda mx: f" cap{mx}" if mx else ""  # noqa: E731
    for tile, nw, mx in fwd_res:
        usage = report(f"tssa resident fwd tokens{bn(tile)}{cap(mx)}", tr._fwd_resident, dict(w=bf, temp=f32, S=f32,
                       A=f32, P=f32, pi=f32, y=bf, sync="*i32", N="i32", NS="i32"), {**rc, "BN": bn(tile)}, a, nw,
                       odd=("NS",), maxnreg=mx)
        resident_note(usage, nw, bn(tile), 4096, a, bn(tile) * row * 2)
    for tile, nw, keep, mx in bwd_res:
        usage = report(f"tssa resident bwd tokens{bn(tile)}{'' if keep else ' dy re-read'}{cap(mx)}",
                       tr._bwd_resident, dict(w=bf, gy=bf, pi_in=f32, temp=f32, S=f32, A=f32, P=f32, G=f32, dS=f32,
                                              gtemp=f32, dw=bf, sync="*i32", N="i32", NS="i32"),
                       {**rc, "BN": bn(tile), "PI_STORED": True, "KEEP_DY": keep}, a, nw, odd=("NS",), maxnreg=mx)
        resident_note(usage, nw, bn(tile), 4096, a, bn(tile) * row * 2 * (2 if keep else 1))
    # causal TSSA, B8 T4096 H12 D64 (one token row [16, 64] at a time; a walk step of UNROLL tokens forward,
    # BWD_UNROLL backward: what launches compile)
    cc = {"C": 768, "D": 64, "H": 12, "HP": 16, "BD": 64, "BT": ct.UNROLL, "TILED": False}
    oc = {**cc, "P_CHANNELS": False}                     # the walked output loop
    bc = {**cc, "BT": ct._plan(8, 4096, 12, 64, 2)[5], "BOUNDED": True, "PI_STORED": True,   # tokens a step, capped
          "PAIR": suffix_pair(a), "SPLIT_PI": ct.BWD_SPLIT_PI}
    fused_fwd, fused_bwd = causal_sigs(bf)
    for nw in (ct.WARPS,) if args.quick else (4, 8):
        report("causal wsum", ct._f_wsum, dict(w=bf, Wsum=f32, T="i32", per="i32"), cc, a, nw)
        report("causal pi", ct._f_pi, dict(w=bf, S_start=f32, temp=f32, bias=f32, pos="*i64", pi_out=f32, AP=f32,
               T="i32", tmax="i32", per="i32"), {**cc, "BOUNDED": True}, a, nw)
        report("causal out", ct._f_out, dict(w=bf, pi_in=f32, AP_start=f32, y=bf, T="i32", per="i32"), oc, a, nw)
    b_sig = dict(w=bf, gy=bf, pi_in=f32, S_start=f32, AP_start=f32, temp=f32, bias=f32, pos="*i64", R_end=f32,
                 Rc_end=f32, ge_io=f32, gpi_io=f32, GAP=f32, GC=f32, gtemp=f32, gbias=f32, dw=bf, T="i32", tmax="i32",
                 per="i32")
    for nw in (ct.BWD_WARPS,) if args.quick else (4, 8):
        for st in (1, 2, 3):
            report(f"causal bwd{st} cap {ct.BWD_MAXNREG}", ct._b_kernel, b_sig, {**bc, "STAGE": st, "DET": False},
                   a, nw, maxnreg=ct.BWD_MAXNREG)
    report(f"causal bwd2 cap {ct.BWD_MAXNREG} deterministic", ct._b_kernel, b_sig, {**bc, "STAGE": 2, "DET": True},
           a, ct.BWD_WARPS, maxnreg=ct.BWD_MAXNREG)
    # packed sequences under deterministic mode run these three-pass kernels with the offsets (VARLEN)
    report("causal pi packed", ct._f_pi, dict(w=bf, S_start=f32, temp=f32, bias=f32, pos="*i64", pi_out=f32, AP=f32,
           T="i32", tmax="i32", per="i32", cu="*i32"), {**cc, "BOUNDED": True, "VARLEN": True}, a, ct.WARPS)
    report(f"causal bwd2 cap {ct.BWD_MAXNREG} deterministic packed", ct._b_kernel, {**b_sig, "cu": "*i32"},
           {**bc, "STAGE": 2, "DET": True, "VARLEN": True}, a, ct.BWD_WARPS, maxnreg=ct.BWD_MAXNREG)
    for nw in (ct.WARPS,) if args.quick else (4, 8):
        report("causal fused fwd", ct._f_fused, fused_fwd, {**oc, "BOUNDED": True, "PREFIX": True}, a, nw)
    for nw in (ct.BWD_WARPS,) if args.quick else (4, 8):
        report(f"causal fused bwd cap {ct.BWD_MAXNREG}", ct._b_fused, fused_bwd, {**bc, "PREFIX": True}, a, nw,
               maxnreg=ct.BWD_MAXNREG)
    # packed sequences (cu_seqlens): each program's sequence offsets its token pointers
    report("causal fused fwd packed", ct._f_fused, fused_fwd, {**oc, "BOUNDED": True, "PREFIX": True, "VARLEN": True},
           a, ct.WARPS)
    report(f"causal fused bwd cap {ct.BWD_MAXNREG} packed", ct._b_fused, fused_bwd,
           {**bc, "PREFIX": True, "VARLEN": True}, a, ct.BWD_WARPS, maxnreg=ct.BWD_MAXNREG)
    # causal TSSA tiled (TILED, BWD_TILED) with the warps TILED_WARPS = 0 chooses (nw 0) or others
    tiles = [("bf16", 12, 0, 8, 4), ("fp32", 12, 0, 8, 4)] if args.quick else [
        ("bf16", 12, 0, 4, 4), ("bf16", 12, 0, 8, 2), ("bf16", 12, 8, 4, 4), ("bf16", 20, 0, 4, 4),
        ("bf16", 20, 0, 8, 2), ("bf16", 20, 4, 8, 2), ("fp32", 12, 0, 8, 4), ("fp32", 20, 0, 8, 4),
        ("bf16", 12, 0, 8, 4, 168), ("bf16", 20, 0, 8, 2, 168)]           # last: forwards with TILED_MAXNREG
    for dname, H, nw, fwd_bt, bwd_bt, *cap in tiles:
        mx = cap[0] if cap else 0
        HP = triton.next_power_of_2(H)
        nw = nw or ct._tile_warps(HP, 64, 2 if dname == "bf16" else 4)
        fwd_sig, bwd_sig = causal_sigs(bf if dname == "bf16" else f32)
        tc = {"C": H * 64, "D": 64, "H": H, "HP": HP, "BD": 64, "TILED": True, "BOUNDED": True, "PREFIX": True}
        capped = f" cap{mx}" if mx else ""
        report(f"causal tiled fwd {dname} H{H} tile{fwd_bt}{capped}", ct._f_fused, fwd_sig,
               {**tc, "BT": fwd_bt, "P_CHANNELS": ctiles.p_channels(nw)}, a,
               nw, maxnreg=mx)
        if not mx:                                        # the cap applies to the forward only
            report(f"causal tiled bwd {dname} H{H} tile{bwd_bt}", ct._b_fused, bwd_sig,
                   {**tc, "BT": bwd_bt, "PI_STORED": True, "PAIR": suffix_pair(a),
                    "SPLIT_PI": ct.BWD_SPLIT_PI}, a, nw)
    # causal TSSA CHUNKED: a program per (sequence, group of heads, chunk) walking tiles of tokens held in each thread
    # (causal_tssa_chunks.py); at H12 a group is 4 heads, none padded
    G = cch.group_size(12)
    chunked = [(ct.CHUNKED_TILE, ct.CHUNKED_BWD_TILE)] if args.quick else [(2, 2), (4, 2), (4, 4), (8, 2)]
    fwd_done = set()                                     # a forward tile is reported once, whatever the backward's
    for fwd_bt, bwd_bt in chunked:
        for dname, t in (("bf16", bf), ("fp16", "*fp16"), ("fp32", f32)) if not args.quick else (("bf16", bf),):
            nw = ct.CHUNKED_WARPS or ct._tile_warps(G, 64, {"bf16": 2, "fp16": 2, "fp32": 4}[dname])
            kc = {"C": 768, "D": 64, "H": 12, "G": G, "BD": 64, "PREFIX": True, "STAGES": ct.CHUNKED_STAGES}
            link = dict(sync="*i32", part=f32)
            sizes = dict(per="i32", NS="i32")
            if (fwd_bt, dname) not in fwd_done:
                fwd_done.add((fwd_bt, dname))
                report(f"causal chunked energy {dname} tile{fwd_bt}", cch._f_energy, dict(w=t, bias=f32, pos="*i64",
                       S0=f32, E=f32, S_start=f32, S_T=f32, **link, T="i32", tmax="i32", **sizes),
                       {**kc, "BT": fwd_bt, "BOUNDED": True}, a, nw, odd=("NS",))
                report(f"causal chunked output {dname} tile{fwd_bt}", cch._f_output, dict(w=t, temp=f32, E=f32,
                       pi=f32, A0=f32, P0=f32, y=t, AP_start=f32, A_T=f32, P_T=f32, **link, T="i32", **sizes),
                       {**kc, "HP": 16, "BT": fwd_bt}, a, nw, odd=("NS",))
            report(f"causal chunked bwd pi {dname} tile{bwd_bt}", cch._b_pi, dict(w=t, gy=t, pi=f32, AP_start=f32,
                   gA_T=f32, gP_T=f32, gpi=f32, R_start=f32, gA0=f32, gP0=f32, **link, T="i32", **sizes),
                   {**kc, "BT": bwd_bt}, a, nw, odd=("NS",))
            report(f"causal chunked bwd dw {dname} tile{bwd_bt}", cch._b_dw, dict(w=t, gy=t, pi=f32, gpi=f32, ge_io=f32,
                   S_start=f32, AP_start=f32, R_start=f32, temp=f32, bias=f32, pos="*i64", gS_T=f32, gtemp=f32,
                   gbias=f32, dw=t, gS0=f32, sync="*i32", part="*fp64", T="i32", tmax="i32", **sizes),
                   {**kc, "HP": 16, "BT": bwd_bt, "BOUNDED": True, "PAIR": suffix_pair(a)}, a, nw, odd=("NS",))
    # linear attention, D64, contiguous q, k, v (RQK, RV: elements between their tokens)
    lc = {"H": 12, "K": 64, "V": 64, "BK": 64, "BV": 64, "BT": 64, "PREC": "tf32", "RQK": 768, "RV": 768}
    lb = {**lc, "RG": 0}     # the backward's: contiguous d q, d k, d v (RG: their token stride, 0 for contiguous)
    for name, t in (("bf16", bf), ("fp16", "*fp16")):    # fp16 runs the state dots as TF32 (fp32 range)
        report(f"linear fwd {name}", la._fwd, dict(q=t, k=t, v=t, S0=f32, z0=f32, y=t, den=f32, S_T=f32, z_T=f32,
               T="i32", eps="fp32"), {**lc, "SPLIT": False}, a, la.WARPS)
        report(f"linear bwd dq {name}", la._bwd_dq, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, S0=f32, z0=f32, dq=t,
               T="i32", eps="fp32"), {**lb, "SPLIT": False}, a, la.WARPS)
        report(f"linear bwd dkv {name}", la._bwd_dkv, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, gS_T=f32, gz_T=f32,
               dk=t, dv=t, dS0=f32, dz0=f32, T="i32", eps="fp32"), lb, a, la.WARPS)
        if name == "bf16":   # q, k, v read where they lie in one [B, T, 3, H, D] projection (the linear LM's), and
            views = {**lc, "RQK": 3 * 768, "RV": 3 * 768}   # its gradient written where it lies (the packed form)
            packed = {**views, "RG": 3 * 768}
            report("linear fwd bf16 qkv views", la._fwd, dict(q=t, k=t, v=t, S0=f32, z0=f32, y=t, den=f32, S_T=f32,
                   z_T=f32, T="i32", eps="fp32"), {**views, "SPLIT": False}, a, la.WARPS)
            report("linear bwd dq bf16 qkvpacked", la._bwd_dq, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, S0=f32,
                   z0=f32, dq=t, T="i32", eps="fp32"), {**packed, "SPLIT": False}, a, la.WARPS)
            report("linear bwd dkv bf16 qkvpacked", la._bwd_dkv, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, gS_T=f32,
                   gz_T=f32, dk=t, dv=t, dS0=f32, dz0=f32, T="i32", eps="fp32"), packed, a, la.WARPS)
            # packed sequences (cu_seqlens) of the projection: each program's sequence offsets its token pointers
            report("linear fwd bf16 qkv views cu_seqlens", la._fwd, dict(q=t, k=t, v=t, S0=f32, z0=f32, y=t,
                   den=f32, S_T=f32, z_T=f32, T="i32", eps="fp32", cu="*i32"),
                   {**views, "SPLIT": False, "VARLEN": True}, a, la.WARPS)
            report("linear bwd dq bf16 qkvpacked cu_seqlens", la._bwd_dq, dict(q=t, k=t, v=t, dy=t, y=t, den=f32,
                   S0=f32, z0=f32, dq=t, T="i32", eps="fp32", cu="*i32"), {**packed, "SPLIT": False, "VARLEN": True},
                   a, la.WARPS)
            report("linear bwd dkv bf16 qkvpacked cu_seqlens", la._bwd_dkv, dict(q=t, k=t, v=t, dy=t, y=t, den=f32,
                   gS_T=f32, gz_T=f32, dk=t, dv=t, dS0=f32, dz0=f32, T="i32", eps="fp32", cu="*i32"),
                   {**packed, "VARLEN": True}, a, la.WARPS)
        # PARALLEL: the state walks, then a program per chunk (linear_attention_chunks.py)
        report(f"linear fwd states {name}", lch._f_states, dict(k=t, v=t, S0=f32, z0=f32, Sc=f32, zc=f32, S_T=f32,
               z_T=f32, T="i32", NT="i32"), lc, a, la.WARPS, odd=("NT",))
        report(f"linear fwd chunks {name}", lch._f_chunks, dict(q=t, k=t, v=t, Sc=f32, zc=f32, y=t, den=f32,
               T="i32", eps="fp32", NT="i32"), lc, a, la.WARPS, odd=("NT",))
        report(f"linear bwd states {name}", lch._b_states, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, S0=f32, z0=f32,
               gS_T=f32, gz_T=f32, Sc=f32, zc=f32, dSc=f32, dzc=f32, dS0=f32, dz0=f32, T="i32", eps="fp32",
               NT="i32"), lc, a, la.WARPS, odd=("NT",))
        for part, what in ((0, ""), (1, " dq"), (2, " dk dv")):      # one kernel, or two (PARALLEL_BWD_SPLIT)
            report(f"linear bwd chunks{what} {name}", lch._b_chunks, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, Sc=f32,
                   zc=f32, dSc=f32, dzc=f32, dq=t, dk=t, dv=t, T="i32", eps="fp32", NT="i32"), {**lb, "PART": part},
                   a, la.WARPS, odd=("NT",))
        if name == "fp16" and args.quick:
            continue
        for split in (2, 4):                              # SPLIT: blocks of the key or value columns
            blk = 64 // split
            report(f"linear fwd {name} split{split}", la._fwd, dict(q=t, k=t, v=t, S0=f32, z0=f32, y=t, den=f32,
                   S_T=f32, z_T=f32, T="i32", eps="fp32"), {**lc, "BV": blk, "SPLIT": True}, a, la.WARPS)
            report(f"linear bwd dq {name} split{split}", la._bwd_dq, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, S0=f32,
                   z0=f32, dq=t, T="i32", eps="fp32"), {**lb, "BK": blk, "SPLIT": True}, a, la.WARPS)
            report(f"linear bwd dk {name} split{split}", la._bwd_dk, dict(q=t, k=t, v=t, dy=t, y=t, den=f32, gS_T=f32,
                   gz_T=f32, dk=t, dS0=f32, dz0=f32, T="i32", eps="fp32"), {**lb, "BK": blk}, a, la.WARPS)
            report(f"linear bwd dv {name} split{split}", la._bwd_dv, dict(q=t, k=t, v=t, dy=t, den=f32, gS_T=f32,
                   dv=t, T="i32", eps="fp32"), {**lb, "BV": blk}, a, la.WARPS)


if __name__ == "__main__":
    main()
