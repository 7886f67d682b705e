"""Fused TSSA (bidirectional) forward and backward.

Tiles are whole token rows viewed as [tokens, heads, channels] (w is [B, N, C], C = H*D head-major), so every
load is contiguous and the softmax over heads stays inside one program. Each program owns a slice of tokens of
one batch element and adds its share of the per-channel statistics into one zeroed fp32 workspace with atomics,
so the passes follow each other with no torch op in between.

Forward, three passes over w:
  1. S = sum_n w^2                                                    (read w)
  2. Pi = softmax_h(temp_h * sum_d w^2 / S); A = sum_n Pi w^2; P = sum_n Pi   (read w, write Pi [B, N, H])
  3. y = -w * Pi / (1 + A / (P + 1e-8))                               (read w and Pi, write y)
Backward reads the Pi the forward pass stored ([B, N, H] fp32: 2H/C of w's bytes in bf16, 4% at C384 H8) with the
per-channel statistics, since recomputing the softmax over heads is most of the passes' arithmetic; SAVE_PI = False
recomputes it instead and keeps no per-token tensor between the two. Within the backward, two per-token [B, N, H]
scalars pass between stages so that the middle stage does not read dy and the last does no softmax backward:
  1. G = sum_n dy w Pi / (1 + dots)^2; r = sum_d dy w / (1 + dots)     (read w, dy; write r)
  2. d energy (from r), d temp and dS                                 (read w; write d energy)
  3. dw                                                               (read w, dy, d energy; write dw)
Forward and backward move 10 units of w's size (4 + 6) against the 5 that reading w and dy, and writing y and dw,
need; RESIDENT runs tssa_resident.py's kernels instead, which hold w on chip and move the 5, where the GPU can hold
all the programs of a batch element at once. The forward runs them by default where it can hold all the programs of
the launch (RESIDENT_ONE_WAVE: short sequences, where one launch of them measured faster than the three passes).
Tile size and warps are autotuned on a GPU (one config under the interpreter). A head of three times a power of
two channels (48) is walked as three unpadded parts (PARTS), the others padded to a power of two.
"""
from __future__ import annotations

import inspect
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import cuda as gdc   # grid dependency control (PDL)

from ..packing import device_offsets
from ..tssa.naive import check_temp, check_w
from . import tssa_resident as resident
from .tssa_tile import NORM_EPS_SQ, PI_EPS, _d_softmax_heads, _grad_w_anchored, _offsets, _rows, _signal, \
    _softmax_heads, _stat, _wait
from .utils import (FUSION, alloc, batch_groups, batch_runs, cdiv, check_available, check_dtype,
                    Tuned, first_order, interpreting, launch_options, next_pow2, on_input_device, packed_length)

PROGRAMS = 4096  # programs a launch aims for (benchmarks/sweep.py: 1.06 ms against 1.09 at 1024, H200)
SAVE_PI = True   # backward reads the forward's Pi [B, N, H] (False: recomputes it from w and the statistics)
L2_GROUP = 0     # >0: run all passes on this many batch elements before the next ones (see _groups); 0: whole batch
PASS_STAGES = 1     # the passes' loops load this many tiles ahead through shared memory (Triton's pipelining, cp.async)
                    # where > 1: more bytes in flight an SM, but the tile goes through shared memory (sm_90, three
                    # parts, tiles of 4096 at 8 warps: forward 1 54 -> 70 SASS a trip)
PASS_PREFETCH = False  # the passes' loops load the next tile's w (and dy) into registers before this tile's math, so
                       # that a warp has two tiles' loads in flight where it had one (Little's law: an SM must keep
                       # bandwidth x latency in flight, ~20 KB on an H200, which 8-warp programs reach only when
                       # most of their warps wait on loads at once); costs the registers of one more tile
OUT_SLICES = False  # the forward's output pass walks slices of tiles as the first two passes do (PROGRAMS programs),
                    # instead of one program a tile: a program's set-up (the per-channel statistics, 1 / (1 + dots),
                    # their layout changes) is then paid once a slice, not once a tile: sm_90, Triton 3.6, three
                    # parts, tiles of 2048 at 4 warps (the H200's choice): 256 SASS a tile of which the loop is 94,
                    # so ~16 a thread's element against ~6.6 over 16 tiles. One tile a program keeps more programs,
                    # each with its tile's loads in flight from its start; which is faster is the GPU's to say
PDL = False         # the passes after the first of each direction launch with programmatic dependent launch (sm_90+):
                    # their programs start while the pass before finishes, load their first tile of w (and dy) if
                    # PASS_PREFETCH, then wait for it (griddepcontrol.wait) before reading what it wrote; the pass
                    # before lets them start once all its programs have started. What it saves: each launch's
                    # start-up and the last wave's tail, at 4 of the 6 boundaries of a forward+backward
FLAT_MIDDLE = True  # the middle pass of each direction (forward 2, backward 2: the softmax over heads and sums over
                    # channels, no tile stored) of a head in three parts (D48, see _flat_middle) loads w as flat
                    # [tokens, heads x channels] rows reshaped to a tile, which puts a token's heads on one warp (a
                    # [tokens, heads, channels] load puts the heads on different warps, and the softmax then crosses
                    # them through shared memory). sm_90, Triton 3.6, at the tiles the H200 autotuned (2048 / 4096
                    # at 4 warps): forward 2 140 -> 136 SASS and 8 -> 2 barriers a trip, backward 2 226 -> 213 and
                    # 5 -> 2 (the other passes store tiles, which would then move between layouts: more of both).
                    # Chosen from the compiled code, not yet timed
PINGPONG = False    # the middle pass of each direction (the forward's Pi pass, the backward's stage 2) takes its
                    # slices from the sequence's end: programs start in launch order, batch elements before slices,
                    # so what a pass reads first is what the pass before read last, still in L2 (50 MB on an H100 /
                    # H200, a quarter of w at B64 N4096 C384 bf16) rather than what it evicted first. Not one
                    # instruction more, and no faster: H200, B64 N4096 C384 H8 bf16 forward+backward from a CUDA
                    # graph 0.845 ms against 0.844 in order (benchmarks/results/h200_run5/sweep.log)
PERSISTENT = False  # one launch per direction: resident programs take the passes' work items by ticket
QUEUE_TOKENS = 64   # persistent: tokens per work item
QUEUE_LAG = 2       # persistent: waves of other work between a batch element's passes (see _item)
QUEUE_PER_SM = 4    # persistent: programs per SM
QUEUE_TILE = 2048   # persistent: elements per tile
QUEUE_WARPS = 8     # persistent: warps per program
PARTS = True        # the passes walk a head of three times a power of two (48) as three unpadded parts of 16
                    # channels (False: one part padded to 64); a tile holds as many tokens either way
RESIDENT = False    # one launch per direction, w (and dy) held on chip by NS programs per batch element (tssa_resident)
RESIDENT_BWD: bool | None = None  # the backward's choice where it differs from the forward's (None: as RESIDENT)
RESIDENT_TILE = 16384     # resident forward: 16-bit elements a program holds at most (fp32: half as many; tokens:
                          # a power of two, see tssa_resident.slices; a head of 48 channels is held unpadded, in
                          # three parts of 16)
RESIDENT_WARPS = 4
RESIDENT_BWD_TILE = 8192  # resident backward, per tile (it holds two: w and dy)
RESIDENT_BWD_WARPS = 4
RESIDENT_KEEP_DY = True   # resident backward holds dy too (False: reads it again for dw: 6 units of traffic, not 5,
                          # and half the registers)
RESIDENT_MAXNREG = 96     # resident forward and backward: registers a thread may use with 16-bit slices (0, and
RESIDENT_BWD_MAXNREG = 128  # fp32: the compiler's choice, see tssa_resident._setting); fewer let an SM hold more
                          # programs, the compiler spilling what no longer fits. These settings hold the most bytes
                          # of slices an sm_90 SM can at D48 in bf16 and fp16 (forward 5 programs, 120 KB; backward 4
                          # programs, 96 KB), spilling nothing under Triton 3.6 and 8 bytes backward under 3.9
                          # (compile_report.py; docs/kernel_design.md). Timed on an H100 (B64 N4096 C384 H8 bf16,
                          # from a CUDA graph): forward 0.387 ms against the passes' 0.355, forward+backward 1.28
                          # against 0.99; hence off by default
RESIDENT_ONE_WAVE = True  # the forward runs resident, whatever RESIDENT says, where the GPU holds every program of
                          # the launch at once (one wave: vision lengths), unless PERSISTENT or L2_GROUP is set; not
                          # under the interpreter. H100, B64 N196 C384 H8 bf16 (448 programs of the 660 it holds):
                          # forward 0.027 ms against the passes' 0.034 from a CUDA graph, 0.105 against 0.185 plain
                          # (one launch instead of three); at N4096 (12 waves) 0.387 against 0.355
RESIDENT_SPILL = 16       # bytes a thread a capped resident kernel may spill; where the cap spills more (wider heads:
                          # D64 holds a third more a thread than D48) the compiler's choice runs instead
last_run = {"forward": None, "backward": None}   # the scheme each direction last ran: benchmarks report it


def _anchored(tile: int, warps: int) -> bool:
    """Whether the backward's dw takes every term as a product with the tile (tssa_tile._grad_w_anchored) where a
    head is walked in three parts: at 4 warps and tiles of up to 4096, where Triton 3.6 otherwise moves 3 tiles a trip
    between layouts (sm_90: 2048: 181 SASS / 3 barriers a trip -> 174 / 0; 4096: 315 / 3 -> 306 / 0). Elsewhere, and
    for a head in one part (nothing moves there), it costs 12-24% more SASS."""
    return warps == 4 and tile <= 4096


def _configs(backward: bool = False):
    """The tiles and warps the autotuner tries (the backward's with their dw formulation, ANCHOR)."""
    shapes = [(4096, 4)] if interpreting() else [(t, nw) for t in (2048, 4096, 8192, 16384) for nw in (4, 8)
                                                 if t // (32 * nw) <= 64]   # at most 64 fp32 tile elements a thread
    return [triton.Config({"TILE": t, **({"ANCHOR": _anchored(t, nw)} if backward else {})}, num_warps=nw)
            for t, nw in shapes]


@triton.jit
def _slice(N, BN: tl.constexpr, REV: tl.constexpr):
    """This program's token range: the batch element's tokens cut into num_programs(1) slices of whole tiles, taken
    from the end where REV (PINGPONG)."""
    s = tl.program_id(1)
    if REV:
        s = tl.num_programs(1) - 1 - s
    per = tl.cdiv(tl.cdiv(N, tl.num_programs(1)), BN) * BN
    return s * per, tl.minimum(s * per + per, N)


@triton.jit
def _part(ptr, b, n0, N, lim, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BN: tl.constexpr, c0: tl.constexpr, W: tl.constexpr, FLAT: tl.constexpr, CUT: tl.constexpr = True):
    """Channels [c0, c0 + W) of each head of tokens [n0, n0 + BN) below lim <= N (CUT; else below N), as stored,
    [BN, HP, BD]. FLAT: loaded as flat [BN, HP * BD] rows and reshaped (tssa_tile._flat), which puts a token's heads
    on one warp's lanes where a [BN, HP, BD] load spreads them over the warps, so the softmax over heads shuffles
    instead of passing through shared memory (FLAT_MIDDLE)."""
    if FLAT:
        off, m = _rows(b, n0, N, C, D, H, HP, BD, BN, c0, W)
        if CUT:
            m = m & (n0 + tl.arange(0, BN)[:, None] < lim)
        return tl.reshape(tl.load(ptr + off, mask=m, other=0.0), (BN, HP, BD))
    off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN, c0, W)
    if CUT:
        m = m & (n0 + tl.arange(0, BN)[:, None, None] < lim)
    return tl.load(ptr + off, mask=m, other=0.0)


@triton.jit
def _tile(ptr, b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BN: tl.constexpr, c0: tl.constexpr, W: tl.constexpr, FLAT: tl.constexpr = False):
    """Channels [c0, c0 + W) of each head of tokens [n0, n0 + BN), as fp32 [BN, HP, BD], with their offsets and mask
    (for stores)."""
    off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN, c0, W)
    return _part(ptr, b, n0, N, N, C, D, H, HP, BD, BN, c0, W, FLAT, False).to(tl.float32), off, m


@triton.jit
def _ahead_parts(ptr, b, lo, N, hi, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                 BD: tl.constexpr, BN: tl.constexpr, GW: tl.constexpr, NP: tl.constexpr, FLAT: tl.constexpr):
    """A slice's first tile as stored (PASS_PREFETCH), each of its NP parts of GW channels (one part: the same three
    times, of which a loop carries only the first). Nothing from the slice's end hi on is read."""
    x0 = _part(ptr, b, lo, N, hi, C, D, H, HP, BD, BN, 0, GW, FLAT)
    x1 = x0
    x2 = x0
    if NP == 3:
        x1 = _part(ptr, b, lo, N, hi, C, D, H, HP, BD, BN, GW, GW, FLAT)
        x2 = _part(ptr, b, lo, N, hi, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
    return x0, x1, x2


@triton.jit
def _prefetched(ptr, nx, b, n0, N, hi, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                BD: tl.constexpr, BN: tl.constexpr, c0: tl.constexpr, W: tl.constexpr, FLAT: tl.constexpr):
    """_tile's (tile, offsets, mask) from nx, this trip's part as loaded a trip before, and the next trip's part as
    stored, loaded before this trip's math (PASS_PREFETCH); past the slice's end hi it reads nothing."""
    off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN, c0, W)
    return nx.to(tl.float32), off, m, _part(ptr, b, n0 + BN, N, hi, C, D, H, HP, BD, BN, c0, W, FLAT)


@triton.jit
def _pdl_start(PDL: tl.constexpr):
    """Lets the next pass's programs start (PDL): once every program of this launch has passed here."""
    if PDL:
        gdc.gdc_launch_dependents()


@triton.jit
def _pdl_wait(PDL: tl.constexpr):
    """Waits until the launch before this one has finished and its writes are visible (PDL; a no-op otherwise)."""
    if PDL:
        gdc.gdc_wait()


@triton.jit
def _fwd_part(w, temp, S, A, P, pi, y, b, lo, hi, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
              HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, PASS: tl.constexpr, NP: tl.constexpr,
              STAGES: tl.constexpr = 1, PREFETCH: tl.constexpr = False, FLAT: tl.constexpr = False,
              PDL: tl.constexpr = False):
    """Forward pass PASS over tokens [lo, hi) of batch element b. 1: S += sum w^2.  2: Pi (stored), A += sum Pi w^2,
    P += sum Pi.  3: y. A head's channels go in NP parts of D / NP, each padded to BD (parts(): D48 as three
    unpadded parts of 16; the per-token energy sums the parts'). Statistics and Pi are read from L2 (.cg): in the
    persistent kernel other programs wrote them. With PDL, nothing an earlier pass wrote is read, and nothing is
    written, before _pdl_wait: only w (the first tile, with PREFETCH)."""
    GW: tl.constexpr = D // NP                                  # channels a part; parts 1 and 2 only where NP == 3
    _pdl_start(PDL)
    if PREFETCH:
        nx0, nx1, nx2 = _ahead_parts(w, b, lo, N, hi, C, D, H, HP, BD, BN, GW, NP, FLAT)
    _pdl_wait(PDL)
    so0, sm0, ho, hm = _stat(b, H, D, HP, BD, 0, GW)
    if NP == 3:
        so1, sm1, _, _ = _stat(b, H, D, HP, BD, GW, GW)
        so2, sm2, _, _ = _stat(b, H, D, HP, BD, 2 * GW, GW)
    hc = tl.arange(0, HP)
    # sums over tokens kept a tile wide and taken over the tile's tokens once, after the loop: a sum a tile would
    # cross lanes (the tokens lie on them) with shuffles every trip, most of the loop's instructions
    acc0 = tl.zeros([BN, HP, BD], dtype=tl.float32)
    acc1 = tl.zeros([BN, HP, BD], dtype=tl.float32)
    acc2 = tl.zeros([BN, HP, BD], dtype=tl.float32)
    P_acc = tl.zeros([BN, HP], dtype=tl.float32)
    if PASS == 2:
        invS0 = _inv_sumsq(S, so0, sm0)
        if NP == 3:
            invS1 = _inv_sumsq(S, so1, sm1)
            invS2 = _inv_sumsq(S, so2, sm2)
        tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    if PASS == 3:
        Pv = tl.load(P + ho, mask=hm, other=0.0, cache_modifier=".cg")
        inv0 = _inv_dots(A, so0, sm0, Pv)
        if NP == 3:
            inv1 = _inv_dots(A, so1, sm1, Pv)
            inv2 = _inv_dots(A, so2, sm2, Pv)
    for n0 in tl.range(lo, hi, BN, num_stages=STAGES):
        if PREFETCH:
            x0, off0, m0, nx0 = _prefetched(w, nx0, b, n0, N, hi, C, D, H, HP, BD, BN, 0, GW, FLAT)
            if NP == 3:
                x1, off1, m1, nx1 = _prefetched(w, nx1, b, n0, N, hi, C, D, H, HP, BD, BN, GW, GW, FLAT)
                x2, off2, m2, nx2 = _prefetched(w, nx2, b, n0, N, hi, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
        else:
            x0, off0, m0 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, 0, GW, FLAT)
            if NP == 3:
                x1, off1, m1 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, GW, GW, FLAT)
                x2, off2, m2 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
        n = n0 + tl.arange(0, BN)
        nh = (n[:, None] < N) & (hc[None, :] < H)
        tok = (b * N + n[:, None]) * H + hc[None, :]                          # offsets of [BN, HP] per-token rows
        if PASS == 1:
            acc0 += x0 * x0
            if NP == 3:
                acc1 += x1 * x1
                acc2 += x2 * x2
        if PASS == 2:
            # w^2 once, for the energy and for A's sum (as p * w * w the compiler would multiply twice)
            # (the parts' terms added before one sum over channels: one set of shuffles, not three)
            xx0 = x0 * x0
            te = xx0 * invS0[None, :, :]
            if NP == 3:
                xx1 = x1 * x1
                xx2 = x2 * x2
                te += xx1 * invS1[None, :, :] + xx2 * invS2[None, :, :]
            e = tl.sum(te, 2)
            p = tl.where(n[:, None] < N, _softmax_heads(e, tv, H, HP), 0.0)
            tl.store(pi + tok, p, mask=nh)
            acc0 += p[:, :, None] * xx0
            if NP == 3:
                acc1 += p[:, :, None] * xx1
                acc2 += p[:, :, None] * xx2
            P_acc += p
        if PASS == 3:
            p = tl.load(pi + tok, mask=nh, other=0.0, cache_modifier=".cg")
            tl.store(y + off0, (-x0 * p[:, :, None] * inv0[None, :, :]).to(y.dtype.element_ty), mask=m0)
            if NP == 3:
                tl.store(y + off1, (-x1 * p[:, :, None] * inv1[None, :, :]).to(y.dtype.element_ty), mask=m1)
                tl.store(y + off2, (-x2 * p[:, :, None] * inv2[None, :, :]).to(y.dtype.element_ty), mask=m2)
    if PASS == 1:
        tl.atomic_add(S + so0, tl.sum(acc0, 0), mask=sm0)
        if NP == 3:
            tl.atomic_add(S + so1, tl.sum(acc1, 0), mask=sm1)
            tl.atomic_add(S + so2, tl.sum(acc2, 0), mask=sm2)
    if PASS == 2:
        tl.atomic_add(A + so0, tl.sum(acc0, 0), mask=sm0)
        if NP == 3:
            tl.atomic_add(A + so1, tl.sum(acc1, 0), mask=sm1)
            tl.atomic_add(A + so2, tl.sum(acc2, 0), mask=sm2)
        tl.atomic_add(P + ho, tl.sum(P_acc, 0), mask=hm)


@triton.jit
def _inv_sumsq(S, so, sm):
    return 1.0 / tl.maximum(tl.load(S + so, mask=sm, other=1.0, cache_modifier=".cg"), NORM_EPS_SQ)


@triton.jit
def _inv_dots(A, so, sm, Pv):
    return 1.0 / (1.0 + tl.load(A + so, mask=sm, other=0.0, cache_modifier=".cg") / (Pv + PI_EPS)[:, None])


@triton.jit
def _fwd(w, temp, S, A, P, pi, y, N, NB, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
         BD: tl.constexpr, NP: tl.constexpr, TILE: tl.constexpr, PASS: tl.constexpr, REV: tl.constexpr,
         STAGES: tl.constexpr, PREFETCH: tl.constexpr, FLAT: tl.constexpr, PDL: tl.constexpr,
         DET: tl.constexpr = False, cu=None, VARLEN: tl.constexpr = False):
    BN: tl.constexpr = TILE // (HP * BD * (4 if NP == 3 else 1))   # three parts take a tile's tokens as four would
    b = tl.program_id(0)
    if VARLEN:     # packed sequences: program_id(0) is a sequence, its tokens from row cu[b] (N: the launch's longest)
        r0, N, b = _sequence(cu, b)
        w += r0 * C
        y += r0 * C
        pi += r0 * H
        S += tl.program_id(0) * C
        A += tl.program_id(0) * C
        P += tl.program_id(0) * H
    lo, hi = _slice(N, BN, REV)
    if DET:        # the sums this pass adds up, a row a slice ([slices, B, ...] zeroed): the host sums them in order
        row = tl.program_id(1) * tl.num_programs(0)
        if PASS == 1:
            S += row * C
        if PASS == 2:
            A += row * C
            P += row * H
    _fwd_part(w, temp, S, A, P, pi, y, b, lo, hi, N, C, D, H, HP, BD, BN, PASS, NP, STAGES, PREFETCH, FLAT, PDL)


@triton.jit
def _sequence(cu, s):
    """Packed sequence s (VARLEN): its first token row, its length, and the batch index its rows and statistics are
    then addressed with (0: the caller offsets its pointers to the sequence's own)."""
    r0 = tl.load(cu + s).to(tl.int64)       # (rows x C may pass 2^31 before the tensor's elements do not)
    return r0, (tl.load(cu + s + 1) - tl.load(cu + s)), s * 0


@triton.jit
def _bwd_stats(S, A, G, dS, so, sm, invPe, STAGE: tl.constexpr):
    """A part's per-channel statistics as a backward stage uses them: 1/S, 1/(1 + dots), G / (P + eps), dS (stage
    3; 0 where S was clamped) and sum_d G A (stage 2's share of d loss / d P)."""
    Sv = tl.load(S + so, mask=sm, other=1.0)
    Av = tl.load(A + so, mask=sm, other=0.0)
    inv = 1.0 / (1.0 + Av * invPe[:, None])
    Gv = tl.zeros_like(Av)
    dSv = tl.zeros_like(Av)
    if STAGE >= 2:
        Gv = tl.load(G + so, mask=sm, other=0.0, cache_modifier=".cg")
    if STAGE == 3:
        dSv = tl.where(Sv > NORM_EPS_SQ, tl.load(dS + so, mask=sm, other=0.0, cache_modifier=".cg"), 0.0)
    return 1.0 / tl.maximum(Sv, NORM_EPS_SQ), inv, Gv * invPe[:, None], dSv, tl.sum(Gv * Av, 1)


@triton.jit
def _bwd_part(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, r_io, ge_io, dw, b, lo, hi, N, C: tl.constexpr,
              D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
              PI_STORED: tl.constexpr, STAGE: tl.constexpr, NP: tl.constexpr, STAGES: tl.constexpr = 1,
              PREFETCH: tl.constexpr = False, FLAT: tl.constexpr = False, PDL: tl.constexpr = False,
              ANCHOR: tl.constexpr = False):
    # Backward stage STAGE over tokens [lo, hi) of batch element b, a head's channels in NP parts (see _fwd_part).
    # STAGE 1: G += sum_n dy w Pi / (1 + dots)^2 (atomics), r = sum_d dy w / (1 + dots) per token (stored).
    # STAGE 2: d energy per token (stored), d temp and dS (atomics); dy is not read: r carries what it needs.
    # STAGE 3: dw from the stored d energy (no softmax backward).
    # With PDL, only w and dy (the first tiles, with PREFETCH) are read before _pdl_wait, and nothing is written.
    GW: tl.constexpr = D // NP                                  # channels a part; parts 1 and 2 only where NP == 3
    DW_ANCHOR: tl.constexpr = ANCHOR and NP == 3                # (one part: no tile moves, and more SASS anchored)
    _pdl_start(PDL)
    if PREFETCH:                                   # w's parts, and dy's where the stage reads it (_fwd_part)
        nx0, nx1, nx2 = _ahead_parts(w, b, lo, N, hi, C, D, H, HP, BD, BN, GW, NP, FLAT)
        if STAGE != 2:
            ng0, ng1, ng2 = _ahead_parts(gy, b, lo, N, hi, C, D, H, HP, BD, BN, GW, NP, FLAT)
    _pdl_wait(PDL)
    so0, sm0, ho, hm = _stat(b, H, D, HP, BD, 0, GW)
    hc = tl.arange(0, HP)
    tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    invPe = 1.0 / (tl.load(P + ho, mask=hm, other=0.0) + PI_EPS)
    invS0, inv0, Gs0, dS0, gA = _bwd_stats(S, A, G, dS, so0, sm0, invPe, STAGE)
    if NP == 3:
        so1, sm1, _, _ = _stat(b, H, D, HP, BD, GW, GW)
        so2, sm2, _, _ = _stat(b, H, D, HP, BD, 2 * GW, GW)
        invS1, inv1, Gs1, dS1, gA1 = _bwd_stats(S, A, G, dS, so1, sm1, invPe, STAGE)
        invS2, inv2, Gs2, dS2, gA2 = _bwd_stats(S, A, G, dS, so2, sm2, invPe, STAGE)
        gA += gA1 + gA2
    gPv = -gA * invPe * invPe                                               # d loss / d P (stage 2)
    acc0 = tl.zeros([BN, HP, BD], dtype=tl.float32)         # sums over tokens a tile wide (see _fwd_part)
    acc1 = tl.zeros([BN, HP, BD], dtype=tl.float32)
    acc2 = tl.zeros([BN, HP, BD], dtype=tl.float32)
    gt = tl.zeros([BN, HP], dtype=tl.float32)
    for n0 in tl.range(lo, hi, BN, num_stages=STAGES):
        if PREFETCH:
            x0, off0, m0, nx0 = _prefetched(w, nx0, b, n0, N, hi, C, D, H, HP, BD, BN, 0, GW, FLAT)
            if NP == 3:
                x1, off1, m1, nx1 = _prefetched(w, nx1, b, n0, N, hi, C, D, H, HP, BD, BN, GW, GW, FLAT)
                x2, off2, m2, nx2 = _prefetched(w, nx2, b, n0, N, hi, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
            if STAGE != 2:
                g0, ng0 = ng0.to(tl.float32), _part(gy, b, n0 + BN, N, hi, C, D, H, HP, BD, BN, 0, GW, FLAT)
                if NP == 3:
                    g1, ng1 = ng1.to(tl.float32), _part(gy, b, n0 + BN, N, hi, C, D, H, HP, BD, BN, GW, GW, FLAT)
                    g2, ng2 = ng2.to(tl.float32), _part(gy, b, n0 + BN, N, hi, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
        else:
            x0, off0, m0 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, 0, GW, FLAT)
            if NP == 3:
                x1, off1, m1 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, GW, GW, FLAT)
                x2, off2, m2 = _tile(w, b, n0, N, C, D, H, HP, BD, BN, 2 * GW, GW, FLAT)
            if STAGE != 2:
                g0 = tl.load(gy + off0, mask=m0, other=0.0).to(tl.float32)
                if NP == 3:
                    g1 = tl.load(gy + off1, mask=m1, other=0.0).to(tl.float32)
                    g2 = tl.load(gy + off2, mask=m2, other=0.0).to(tl.float32)
        n = n0 + tl.arange(0, BN)
        nh = (n[:, None] < N) & (hc[None, :] < H)
        tok = (b * N + n[:, None]) * H + hc[None, :]                          # offsets of [BN, HP] per-token rows
        xx0 = x0 * x0                                  # w^2 once (unused by stages 1 and 3 where Pi is stored)
        if NP == 3:
            xx1 = x1 * x1
            xx2 = x2 * x2
        if STAGE == 2 or not PI_STORED:                                       # the energy, for d temp or Pi
            te = xx0 * invS0[None, :, :]                   # the parts' terms added before one sum (see _fwd_part)
            if NP == 3:
                te += xx1 * invS1[None, :, :] + xx2 * invS2[None, :, :]
            e = tl.sum(te, 2)
        if PI_STORED:
            pi = tl.load(pi_in + tok, mask=nh, other=0.0)
        else:
            pi = _softmax_heads(e, tv, H, HP)
        if STAGE == 1:
            acc0 += g0 * x0 * pi[:, :, None]
            tr = g0 * x0 * inv0[None, :, :]
            if NP == 3:
                acc1 += g1 * x1 * pi[:, :, None]
                acc2 += g2 * x2 * pi[:, :, None]
                tr += g1 * x1 * inv1[None, :, :] + g2 * x2 * inv2[None, :, :]
            tl.store(r_io + tok, tl.sum(tr, 2), mask=nh)
        if STAGE == 2:
            r = tl.load(r_io + tok, mask=nh, other=0.0, cache_modifier=".cg")
            tq = Gs0[None, :, :] * xx0
            if NP == 3:
                tq += Gs1[None, :, :] * xx1 + Gs2[None, :, :] * xx2
            q = tl.sum(tq, 2)
            gz, ge = _d_softmax_heads(q - r + gPv[None, :], pi, tv, nh)
            tl.store(ge_io + tok, ge, mask=nh)
            gt += gz * e
            acc0 += ge[:, :, None] * xx0
            if NP == 3:
                acc1 += ge[:, :, None] * xx1
                acc2 += ge[:, :, None] * xx2
        if STAGE == 3:
            ge = tl.load(ge_io + tok, mask=nh, other=0.0, cache_modifier=".cg")
            grad = _grad_w_anchored(x0, g0, pi, 2.0 * Gs0, inv0, ge, 2.0 * invS0, 2.0 * dS0, DW_ANCHOR)
            tl.store(dw + off0, grad.to(dw.dtype.element_ty), mask=m0)
            if NP == 3:
                grad = _grad_w_anchored(x1, g1, pi, 2.0 * Gs1, inv1, ge, 2.0 * invS1, 2.0 * dS1, DW_ANCHOR)
                tl.store(dw + off1, grad.to(dw.dtype.element_ty), mask=m1)
                grad = _grad_w_anchored(x2, g2, pi, 2.0 * Gs2, inv2, ge, 2.0 * invS2, 2.0 * dS2, DW_ANCHOR)
                tl.store(dw + off2, grad.to(dw.dtype.element_ty), mask=m2)
    if STAGE == 1:
        tl.atomic_add(G + so0, tl.sum(acc0, 0) * inv0 * inv0, mask=sm0)
        if NP == 3:
            tl.atomic_add(G + so1, tl.sum(acc1, 0) * inv1 * inv1, mask=sm1)
            tl.atomic_add(G + so2, tl.sum(acc2, 0) * inv2 * inv2, mask=sm2)
    if STAGE == 2:
        tl.atomic_add(dS + so0, -tl.sum(acc0, 0) * invS0 * invS0, mask=sm0)
        if NP == 3:
            tl.atomic_add(dS + so1, -tl.sum(acc1, 0) * invS1 * invS1, mask=sm1)
            tl.atomic_add(dS + so2, -tl.sum(acc2, 0) * invS2 * invS2, mask=sm2)
        tl.atomic_add(gtemp + hc, tl.sum(gt, 0), mask=hc < H)


@triton.jit
def _bwd(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, r_io, ge_io, dw, N, NB, C: tl.constexpr, D: tl.constexpr,
         H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, PI_STORED: tl.constexpr,
         TILE: tl.constexpr, STAGE: tl.constexpr, REV: tl.constexpr, STAGES: tl.constexpr,
         PREFETCH: tl.constexpr, FLAT: tl.constexpr, PDL: tl.constexpr, ANCHOR: tl.constexpr = False,
         DET: tl.constexpr = False, cu=None, VARLEN: tl.constexpr = False):
    BN: tl.constexpr = TILE // (HP * BD * (4 if NP == 3 else 1))
    b = tl.program_id(0)
    if VARLEN:     # as in _fwd (pi_in is w where Pi is not stored: offset, never read)
        r0, N, b = _sequence(cu, b)
        w += r0 * C
        gy += r0 * C
        dw += r0 * C
        pi_in += r0 * H
        r_io += r0 * H
        ge_io += r0 * H
        S += tl.program_id(0) * C
        A += tl.program_id(0) * C
        G += tl.program_id(0) * C
        dS += tl.program_id(0) * C
        P += tl.program_id(0) * H
    lo, hi = _slice(N, BN, REV)
    if DET:        # as in _fwd: a row a slice (d temp: a row a slice and batch element)
        row = tl.program_id(1) * tl.num_programs(0)
        if STAGE == 1:
            G += row * C
        if STAGE == 2:
            dS += row * C
            gtemp += (row + tl.program_id(0)) * H
    _bwd_part(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, r_io, ge_io, dw, b, lo, hi, N, C, D, H, HP, BD, BN,
              PI_STORED, STAGE, NP, STAGES, PREFETCH, FLAT, PDL, ANCHOR)


@triton.jit
def _item(sync, total, B, NI, per, N, LAG: tl.constexpr):
    """The next work item of a persistent program: (ticket, batch element, pass 0-2, token range). Items run in
    waves: wave v holds pass 0 of batch element v, pass 1 of v - LAG and pass 2 of v - 2 LAG (NI items each), so
    a pass's items follow the previous pass of their batch element by LAG waves of other work; b >= B marks an
    item outside the batch (the first and last waves)."""
    k = tl.atomic_add(sync, 1)
    v = k // (3 * NI)
    r = k % (3 * NI)
    ps = r // NI
    b = v - ps * LAG
    b = tl.where((b >= 0) & (k < total), b, B)
    lo = (r % NI) * per
    return k, b, ps, lo, tl.minimum(lo + per, N)


@triton.jit
def _wait_previous_pass(done, ps, NI):
    """Spin until all NI items of the pass before pass ps (of this item's batch element) are done."""
    if ps > 0:
        _wait(done + ps - 1, NI)


@triton.jit
def _fwd_persistent(w, temp, S, A, P, pi, y, sync, N, B, NI, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                    HP: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, TILE: tl.constexpr, LAG: tl.constexpr):
    # All three forward passes in one launch of resident programs that take work items by ticket (_item). An item
    # of pass p waits until every item of pass p - 1 of its batch element is done: those hold lower tickets, so
    # they belong to programs already running and nothing waits on a program that has not started. A batch
    # element's w is read three times within a few waves, while it can still be in L2.
    BN: tl.constexpr = TILE // (HP * BD * (4 if NP == 3 else 1))
    total = (B + 2 * LAG) * 3 * NI
    k, b, ps, lo, hi = _item(sync, total, B, NI, per, N, LAG)
    while k < total:
        if b < B:
            done = sync + 1 + b * 3
            _wait_previous_pass(done, ps, NI)
            for p in tl.static_range(3):                 # the pass number is a compile-time constant
                if ps == p:
                    _fwd_part(w, temp, S, A, P, pi, y, b, lo, hi, N, C, D, H, HP, BD, BN, p + 1, NP)
            _signal(done + ps)
        k, b, ps, lo, hi = _item(sync, total, B, NI, per, N, LAG)


@triton.jit
def _bwd_persistent(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, r_io, ge_io, dw, sync, N, B, NI, per,
                    C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
                    NP: tl.constexpr, PI_STORED: tl.constexpr, TILE: tl.constexpr, LAG: tl.constexpr):
    # The three backward stages in one launch, scheduled as _fwd_persistent schedules the forward passes.
    BN: tl.constexpr = TILE // (HP * BD * (4 if NP == 3 else 1))
    total = (B + 2 * LAG) * 3 * NI
    k, b, ps, lo, hi = _item(sync, total, B, NI, per, N, LAG)
    while k < total:
        if b < B:
            done = sync + 1 + b * 3
            _wait_previous_pass(done, ps, NI)
            for p in tl.static_range(3):
                if ps == p:
                    _bwd_part(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, r_io, ge_io, dw, b, lo, hi, N, C, D, H, HP,
                              BD, BN, PI_STORED, p + 1, NP)
            _signal(done + ps)
        k, b, ps, lo, hi = _item(sync, total, B, NI, per, N, LAG)


def autotuned(configs=None, do_bench=None) -> dict:
    """The autotuned passes: one autotuner each, resetting only the statistics its own pass accumulates while it
    times configs (never what an earlier pass produced). Keyed on NB, the power of two at or above N (settings are
    tuned once per length bucket), and on PASS / STAGE (the passes share a kernel source); where Triton can, the
    choice is cached on disk so a new process does not time the configs again."""
    disk = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}

    def tune(fn, reset=None, variant=None):
        key = ["NB", "C", "H", "NP", "STAGES", "PREFETCH", "FLAT", "PDL", "DET", "VARLEN"] + ([variant] if variant
                                                                                           else [])
        return Tuned(triton.autotune(configs=configs or _configs(fn is _bwd), reset_to_zero=reset, do_bench=do_bench,
                                     key=key, **disk)(fn))
    return {"sumsq": tune(_fwd, ["S"], "PASS"), "pi": tune(_fwd, ["A", "P"], "PASS"), "out": tune(_fwd, None, "PASS"),
            "out_slices": tune(_fwd, None, "PASS"),   # its own choices: another grid (OUT_SLICES)
            1: tune(_bwd, ["G"], "STAGE"), 2: tune(_bwd, ["dS", "gtemp"], "STAGE"), 3: tune(_bwd, None, "STAGE")}


KERNELS = autotuned()


def _flat_middle(NP: int) -> bool:
    """Whether the middle passes load flat rows (FLAT_MIDDLE): where a head is walked in NP = 3 parts. A head in one
    part keeps its [tokens, heads, channels] loads: there flat rows moved no barrier out of the loop and cost SASS
    (sm_90, Triton 3.6, D64: forward 2 at 2048 / 4 warps 168 -> 204 a trip, backward 2 192 -> 209)."""
    return bool(FLAT_MIDDLE) and NP == 3


def _pdl(device) -> bool:
    """Whether the passes launch with PDL: set, on a GPU of compute capability 9.0 or later (griddepcontrol), under
    a Triton that has it; never under the interpreter."""
    return bool(PDL) and not interpreting() and hasattr(gdc, "gdc_wait") and \
        torch.cuda.get_device_capability(device)[0] >= 9


def _blocks(H: int, D: int):
    return max(2, next_pow2(H)), max(2, next_pow2(D))


def _parts(D: int, BD: int) -> tuple[int, int]:
    """(width of a part, parts) the passes walk a head's channels in: PARTS and D48 (three times a power of two),
    three unpadded parts of D / 3 (tssa_resident.parts); else one part padded to BD. Either way a tile of TILE
    elements holds TILE / (HP * BD) tokens, BD the padded head."""
    NP, part = resident.parts(D) if PARTS else (1, BD)
    return (part, NP) if NP == 3 else (BD, 1)


def _slices(B: int, N: int, HP: int, BD: int):
    """Grid of the slice-walking passes: enough programs per batch element to fill a large GPU."""
    return lambda meta: (B, max(1, min(cdiv(N, max(1, meta["TILE"] // (HP * BD))),
                                       cdiv(PROGRAMS, max(B, 1)))))


def _groups(B: int, group: int):
    """(batch elements, view of a [B, ...] tensor) per group the passes run over one after another. With
    group = g > 0 (L2_GROUP) every pass runs on g batch elements before the next g start, so the w (and dy) a later
    pass reads again is still in the L2 cache (50 MB on an H100 / H200: g * N * C * 2 bytes forward, twice that
    backward) instead of coming from HBM again; it costs 3 launches per group, which a CUDA-graph-captured training
    step does not pay on the host."""
    return batch_groups(B, group)


def _persistent(B: int, N: int, HP: int, BD: int, device) -> tuple:
    """(grid, tokens per item, items per pass and batch element) of the persistent kernels."""
    BN = max(1, QUEUE_TILE // (HP * BD))
    per = cdiv(max(QUEUE_TOKENS, 1), BN) * BN
    NI = cdiv(N, per)
    resident = 3 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count * QUEUE_PER_SM
    return (max(1, min(resident, (B + 2 * QUEUE_LAG) * 3 * NI)),), per, NI


def _plan(packed: bool = False) -> list:
    """[resident forward, resident backward, persistent, L2 group, Pi saved, resident forward in one wave,
    deterministic]: the schemes both directions of one call run with, whatever the settings are by the backward
    pass. Under torch.use_deterministic_algorithms(True), the passes in one group (deterministic: see _partials).
    Packed sequences run the passes (a program's slice lies in one sequence; the resident and persistent kernels and
    L2 groups cut the batch as equal rows)."""
    if torch.are_deterministic_algorithms_enabled():
        return [0, 0, 0, 0, int(SAVE_PI), 0, 1]
    if packed:
        return [0, 0, 0, 0, int(SAVE_PI), 0, 0]
    return [int(RESIDENT), int(RESIDENT if RESIDENT_BWD is None else RESIDENT_BWD), int(PERSISTENT), L2_GROUP,
            int(SAVE_PI), int(RESIDENT_ONE_WAVE and not PERSISTENT and L2_GROUP <= 0), 0]


def _partials(B: int, widths: tuple, like: torch.Tensor) -> list:
    """Deterministic sums: zeroed [slices, B, width] buffers, one per statistic, into which each program of a pass
    adds its slice's sums at a row of its own (DET) instead of every slice adding into one row with atomics, in
    whatever order the programs run. The host then sums the rows in a fixed order (torch.sum over the slices), so a
    run's results are the same bits every time. Rows: the most slices a pass may cut a batch element into (_slices)."""
    rows = max(1, cdiv(PROGRAMS, max(B, 1)))
    buf = torch.zeros(rows * B * sum(widths), device=like.device, dtype=torch.float32)
    return [t.view(rows, B, n) for t, n in zip(buf.split([rows * B * n for n in widths]), widths)]


def _packed_launch(cu, T: int):
    """(sequences, tokens a launch is sized for, the kernels' packing arguments): the batch's where cu is None, else
    packed sequences' (cu: int32 offsets on w's device, T: the longest sequence's length or more)."""
    return (None, None, {}) if cu is None else (cu.shape[0] - 1, T, dict(cu=cu, VARLEN=True))


@on_input_device
def _forward(w, temp, H: int, plan: list, cu=None, T: int = 0):
    """w: [B, N, C] contiguous, temp: [H] fp32 -> y [B, N, C], the statistics' workspace ws (S [B, C], A [B, C],
    P [B, H], the programs' counters) and Pi [B, N, H] (empty where the plan does not save it), fp32. Packed
    sequences (cu, T: _packed_launch): w [1, total, C], the statistics a sequence's ([S, C], ...)."""
    B, N, C = w.shape
    rows = w.shape[:2]
    nseq, T, packing = _packed_launch(cu, T)
    if cu is not None:
        B, N = nseq, T
    D = C // H
    res, _, persistent, l2_group, save_pi, one_wave, det = plan
    whole = not res and bool(one_wave) and not interpreting()   # RESIDENT_ONE_WAVE
    HP, BD = _blocks(H, D)
    n = B * (2 * C + H)
    ws = torch.zeros(n + 1 + 3 * B, device=w.device, dtype=torch.float32)   # one memset for all of them
    S, A, P = ws[:B * C].view(B, C), ws[B * C:2 * B * C].view(B, C), ws[2 * B * C:n].view(B, H)
    pi = alloc(*rows, H, like=w, dtype=torch.float32)
    y = alloc(*rows, C, like=w)
    fit = (res or whole) and resident.forward(w, temp, S, A, P, pi, y, ws[n:].view(torch.int32), N, C, D, H, HP,
                                              RESIDENT_TILE, RESIDENT_WARPS, RESIDENT_MAXNREG, RESIDENT_SPILL, whole)
    if persistent and not fit:
        grid, per, NI = _persistent(B, N, HP, BD, w.device)
        _fwd_persistent[grid](w, temp, S, A, P, pi, y, ws[n:].view(torch.int32), N, B, NI, per, C, D, H, HP,
                              *_parts(D, BD), QUEUE_TILE, QUEUE_LAG, **launch_options(QUEUE_WARPS))
    last_run["forward"] = "resident" if fit else "persistent" if persistent else "passes"
    pdl = _pdl(w.device) and not det    # (deterministic: the host's sums come between the passes)
    after = {"launch_pdl": True} if pdl else {}    # the passes after the first: launched while it finishes
    parts = _parts(D, BD)
    ahead = dict(STAGES=PASS_STAGES, PREFETCH=bool(PASS_PREFETCH), PDL=pdl, DET=bool(det))
    for nb, g in [] if persistent or fit else _groups(B, l2_group):
        grid = _slices(nb, N, HP, BD)
        pS, pA, pP = _partials(nb, (C, C, H), w) if det else (g(S), g(A), g(P))
        head, tail = (g(w), temp), (g(pi), g(y), N, next_pow2(N), C, D, H, HP, *parts)
        KERNELS["sumsq"][grid](*head, pS, g(A), g(P), *tail, PASS=1, REV=False, **ahead, FLAT=False, **FUSION,
                               **packing)
        if det:
            torch.sum(pS, 0, out=g(S))
        KERNELS["pi"][grid](*head, g(S), pA, pP, *tail, PASS=2, REV=bool(PINGPONG), **ahead,
                            FLAT=_flat_middle(parts[1]), **FUSION, **after, **packing)
        if det:
            torch.sum(pA, 0, out=g(A))
            torch.sum(pP, 0, out=g(P))
        stats = (*head, g(S), g(A), g(P), *tail)
        out_grid = lambda meta: (nb, cdiv(N, max(1, meta["TILE"] // (HP * BD))))  # noqa: E731  (a token a row)
        # a tile a program (the autotuner: warps), so nothing to load ahead; or slices (OUT_SLICES)
        out = (KERNELS["out_slices"], grid) if OUT_SLICES else (KERNELS["out"], out_grid)
        out[0][out[1]](*stats, PASS=3, REV=False, STAGES=PASS_STAGES, PREFETCH=bool(PASS_PREFETCH and OUT_SLICES),
                       FLAT=False, PDL=pdl, DET=bool(det), **FUSION, **after, **packing)
    return y, ws, pi if save_pi else pi.new_empty(0)


@on_input_device
def _backward(gy, w, temp, ws, pi, H: int, plan: list, cu=None, T: int = 0):
    """dw [B, N, C] and d temp [H] (fp32) from gy [B, N, C] and what _forward returned (pi empty: recomputed)."""
    _, res, persistent, l2_group, _, _, det = plan
    B, N, C = w.shape
    rows = w.shape[:2]
    nseq, T, packing = _packed_launch(cu, T)
    if cu is not None:
        B, N = nseq, T
    D = C // H
    HP, BD = _blocks(H, D)
    S, A, P = ws[:B * C].view(B, C), ws[B * C:2 * B * C].view(B, C), ws[2 * B * C:B * (2 * C + H)].view(B, H)
    n = 2 * B * C + H
    gws = torch.zeros(n + 1 + 3 * B, device=w.device, dtype=torch.float32)
    G, dS, gtemp = gws[:B * C].view(B, C), gws[B * C:2 * B * C].view(B, C), gws[2 * B * C:n]
    dw = alloc(*rows, C, like=w)
    stored = bool(plan[4])
    fit = res and resident.backward(w, gy, pi if stored else w, temp, S, A, P, G, dS, gtemp, dw,
                                    gws[n:].view(torch.int32), N, C, D, H, HP, stored, RESIDENT_KEEP_DY,
                                    RESIDENT_BWD_TILE, RESIDENT_BWD_WARPS, RESIDENT_BWD_MAXNREG, RESIDENT_SPILL)
    if not fit:                    # per-token values passed between stages (the resident kernel keeps them)
        r, ge = alloc(*rows, H, like=w, dtype=torch.float32), alloc(*rows, H, like=w, dtype=torch.float32)
    if persistent and not fit:
        grid, per, NI = _persistent(B, N, HP, BD, w.device)
        _bwd_persistent[grid](w, gy, pi if stored else w, temp, S, A, P, G, dS, gtemp, r, ge, dw,
                              gws[n:].view(torch.int32), N, B, NI, per, C, D, H, HP, *_parts(D, BD), stored,
                              QUEUE_TILE, QUEUE_LAG, **launch_options(QUEUE_WARPS))
    last_run["backward"] = "resident" if fit else "persistent" if persistent else "passes"
    pdl, parts = _pdl(w.device) and not det, _parts(D, BD)
    for nb, g in [] if persistent or fit else _groups(B, l2_group):
        grid = _slices(nb, N, HP, BD)
        pG, pdS, pT = _partials(nb, (C, C, H), w) if det else (g(G), g(dS), gtemp)
        for stage in (1, 2, 3):
            into = (pG, g(dS), gtemp) if stage == 1 else (g(G), pdS, pT) if stage == 2 else (g(G), g(dS), gtemp)
            KERNELS[stage][grid](g(w), g(gy), g(pi) if stored else g(w), temp, g(S), g(A), g(P), into[0], into[1],
                                 into[2], g(r), g(ge), g(dw), N, next_pow2(N), C, D, H, HP, *parts,
                                 stored, STAGE=stage, REV=bool(PINGPONG) and stage == 2, STAGES=PASS_STAGES,
                                 PREFETCH=bool(PASS_PREFETCH), FLAT=_flat_middle(parts[1]) and stage == 2, PDL=pdl,
                                 DET=bool(det), **({"launch_pdl": True} if pdl and stage > 1 else {}),
                                 **FUSION, **packing)
            if det and stage == 1:
                torch.sum(pG, 0, out=g(G))
            if det and stage == 2:
                torch.sum(pdS, 0, out=g(dS))
                torch.sum(pT, (0, 1), out=gtemp)
    return dw, gtemp


class TSSAFunction(torch.autograd.Function):
    """Eager autograd over _forward / _backward (under torch.compile the custom ops below run instead)."""

    @staticmethod
    def forward(ctx, w, temp, num_heads, plan, cu=None, T=0):
        y, ws, pi = _forward(w, temp, num_heads, plan, cu, T)
        ctx.save_for_backward(w, temp, ws, pi, cu)
        ctx.num_heads, ctx.plan, ctx.T = num_heads, plan, T
        return y

    @staticmethod
    def backward(ctx, gy):
        w, temp, ws, pi, cu = ctx.saved_tensors
        grads = _backward(gy.contiguous(), w, temp, ws, pi, ctx.num_heads, ctx.plan, cu, ctx.T)
        return (*first_order("tssa", grads, (w, temp)), None, None, None, None)


@torch.library.custom_op("tost_edge::tssa_triton_forward", mutates_args=())
def _forward_op(w: Tensor, temp: Tensor, num_heads: int, plan: List[int], cu: Optional[Tensor] = None,
                max_seqlen: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    return _forward(w, temp, num_heads, plan, cu, max_seqlen)


@_forward_op.register_fake
def _(w, temp, num_heads, plan, cu=None, max_seqlen=0):
    _, N, C = w.shape
    B = w.shape[0] if cu is None else cu.shape[0] - 1        # (packed: the statistics are a sequence's)
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(w), w.new_empty(B * (2 * C + num_heads) + 1 + 3 * B, **f32),
            w.new_empty((w.shape[0], N, num_heads) if plan[4] else (0,), **f32))


@torch.library.custom_op("tost_edge::tssa_triton_backward", mutates_args=())
def _backward_op(gy: Tensor, w: Tensor, temp: Tensor, ws: Tensor, pi: Tensor, num_heads: int,
                 plan: List[int], cu: Optional[Tensor] = None, max_seqlen: int = 0) -> Tuple[Tensor, Tensor]:
    dw, gtemp = _backward(gy, w, temp, ws, pi, num_heads, plan, cu, max_seqlen)
    return dw, gtemp.clone()   # a view of the backward's workspace: an op's outputs own their memory


@_backward_op.register_fake
def _(gy, w, temp, ws, pi, num_heads, plan, cu=None, max_seqlen=0):
    return torch.empty_like(w), temp.new_empty(num_heads, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    w, temp, num_heads, plan, cu, max_seqlen = inputs
    _, ws, pi = output
    ctx.save_for_backward(w, temp, ws, pi, cu)
    ctx.num_heads, ctx.plan, ctx.T = num_heads, plan, max_seqlen
    ctx.mark_non_differentiable(ws, pi)


def _op_backward(ctx, gy, _gws, _gpi):
    w, temp, ws, pi, cu = ctx.saved_tensors
    grads = _backward_op(gy.contiguous(), w, temp, ws, pi, ctx.num_heads, ctx.plan, cu, ctx.T)
    return (*grads, None, None, None, None)


_forward_op.register_autograd(_op_backward, setup_context=_setup_context)


def _apply(w, temp, num_heads, packed=()):
    """y [B, N, C] through the autograd Function, or under torch.compile the custom op (one opaque node). packed:
    (int32 offsets on w's device, the longest sequence's length) of packed sequences."""
    args = (w.contiguous(), temp.float().contiguous(), num_heads, _plan(bool(packed)), *packed)
    if torch.compiler.is_compiling():
        return _forward_op(*args)[0]
    return TSSAFunction.apply(*args)


def triton_tssa(w: torch.Tensor, temp: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Fused TSSA. w: [B, N, C] (fp32/fp16/bf16), temp: [H] or [H, 1] -> y: [B, N, C] in w's dtype."""
    check_w(w, num_heads)
    t = check_temp(temp, num_heads)
    check_dtype("w", w)
    check_available(w, t)
    runs = batch_runs(w.shape[0], w[0].numel() if w.shape[0] else 0, "w")
    if len(runs) > 1:
        return torch.cat([_apply(w[r], t, num_heads) for r in runs])
    return _apply(w, t, num_heads)


def triton_tssa_packed(w: torch.Tensor, temp: torch.Tensor, num_heads: int, cu, max_seqlen=None) -> torch.Tensor:
    """Fused TSSA of packed sequences (the contract of tost_edge.ops.tssa with cu_seqlens): w [1, total, C],
    sequence s its tokens [cu[s], cu[s + 1]) with its own statistics; one launch a pass for all of them, each
    program's slice within one sequence. cu: checked host ints, or a tensor of offsets whose values are not read on
    the host, which needs max_seqlen (at least the longest sequence's length: the launch is sized for it)."""
    C = w.shape[2]
    check_w(w.new_empty(1, 1, C), num_heads)                   # (w's rank and batch of 1: packed_offsets)
    t = check_temp(temp, num_heads)
    check_dtype("w", w)
    check_available(w, t)
    T = packed_length(w, cu, max_seqlen)
    if not isinstance(cu, Tensor):
        cu = device_offsets(cu, w.device)
    if T == 0 or w.shape[1] == 0:
        return w.clone()
    return _apply(w, t, num_heads, (cu.to(w.device, torch.int32), int(T)))
