"""Chunked causal TSSA forward and backward, parallel over (sequence, slice of tokens).

Each program walks a slice of one sequence token by token, carrying the running sums (fp32 [heads, channels]) in
registers, exactly the recurrence of the step form; a token row [heads, channels] is one contiguous load and the
softmax over heads stays inside the program. The sums carried into each slice come from a scan over the per-slice
totals (a small kernel that also yields the final state, or in the backward pass the gradient of the initial
state), so all slices of all sequences run in parallel and no torch op sits between the passes.

Forward (w: [B, T, C]):
  1. per slice: sum of w^2                                   -> S at each slice start (plus the initial state)
  2. per token: S += w^2, e = sum_d w^2 / max(S, 1e-12) + D * denom_bias[h, pos], Pi = softmax_h(temp_h * e)
     (stored); per-slice sums of Pi w^2 and Pi               -> A, P at each slice start
  3. per token: A += Pi w^2, P += Pi, y = -w Pi / (1 + A / (P + 1e-8))
Backward, three passes that recompute the forward sums from w and the stored Pi (SAVE_PI = False: recomputed):
  1. slice totals of the direct gradients of A and P;
  2. their suffix sums give d Pi -> d energy (stored), d temp, d denom_bias and slice totals of the direct d S;
  3. with the suffix sums of that, dw.
The suffix sum of d S is a slice total minus what the walk has passed, kept in fp64: at a sequence's first tokens
d S is huge (-d e w^2 / S^2 with S = w^2) and in fp32 the difference would lose every later token. Where the GPU's
fp64 is slow (SUFFIX_FP64), the backward keeps it as a pair of fp32 instead (fastmath._suffix_add); what passes
between slices stays fp64 (one value a channel a slice).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..causal_tssa.state import CausalTSSAState, prepare
from ..packing import device_offsets, sequence_positions
from .causal_tssa_tiles import _tile_b_walk, _tile_walk_out, _tile_walk_pi, _tile_wsum, p_channels
from .fastmath import _rcp, _suffix_add, _suffix_split, _suffix_term, _suffix_value
from .utils import (alloc, batch_groups, batch_runs, cdiv, check_available, check_dtype,
                    deterministic_algorithms, fast_fp64, first_order, join_runs, launch_options, next_pow2,
                    next_pow2_capped, on_input_device, packed_length, unspilled)

PROGRAMS = 1024  # programs a launch aims for (a large GPU holds a few per SM)
UNROLL = 8       # tokens per tile of the tiled forward, or per unrolled step of a walk (their loads issued
                 # together; with TILED off, 4 was the H200's best: set it with TILED)
WARPS = 8        # warps per program, forward (benchmarks/sweep.py, H200, fused: 8 and 8 warps 0.64 ms, 4 and 4 1.10)
BWD_WARPS = 8    # warps per program, backward
SAVE_PI = True   # backward reads the forward's Pi [B, T, H] (False: recomputes the softmax over heads)
L2_GROUP = 0     # >0: run all passes on this many sequences before the next ones (see _groups); 0: whole batch
FUSED = True     # one launch per direction (slices chained by _lookback) instead of three kernels and two scans:
                 # H200 B8 T4096 H12 fwd+bwd 0.64-0.85 ms against 1.36 (host launches); from a CUDA graph 0.47 vs 0.43
LOOKBACK_PREFIX = True   # _lookback publishes inclusive rows (False: totals only, every program walks to the start)
TILED = True     # forward: walk a slice UNROLL tokens at a time as one tile (causal_tssa_tiles.py): cumulative sums
                 # over the tile's tokens and one set of reductions per tile instead of per token (sm_90, fused, H12:
                 # the Pi loop has 7 barriers per 8-token tile against 24 per 4 tokens walked). H100 B8 T4096 H12
                 # from a CUDA graph: forward 0.125 ms against 0.159 walked, forward+backward 0.479 against 0.514
BWD_TILED = False  # the same for the backward (its stage-2 loop: 8 barriers per 4-token tile against 20 per 4 walked;
                   # H100 sweep: 0.578 ms forward+backward from a graph against 0.477 walked: it spills, see below)
BWD_SPLIT_PI = True  # the walked backward's first stage stores each token's d Pi but for its terms in what flows in
                     # after the slice (d Pi is linear in them), so the second adds those from w alone: no dy, no
                     # A, P or 1 / (1 + dots) there (sm_90, Triton 3.6, H12, fused, 8 warps: 1368 SASS a step of 4
                     # tokens against 1522, one read of dy fewer) at two barriers more a step (the first stage's
                     # store: 9 against 7). False: the second stage recomputes all of d Pi
TILED_MAXNREG = 0  # registers a thread of the tiled forward may use (0: the compiler's choice): a cap lets an SM
                   # hold more of its programs (Triton 3.6: tiles of 8 at H12 take 164 since the output loop carries
                   # P per channel, 3 programs an SM; 188 before). The backward's cap is BWD_MAXNREG (tiled, it
                   # spills hundreds of bytes at 168)
TILED_WARPS = 0  # warps of the tiled kernels; 0: _tile_warps, which keeps a tile's tokens in each thread
                 # (compile_report.py shows the layouts)
SUFFIX_FP64: bool | None = None  # the backward adds up d S in fp64 (True) or in pairs of fp32 (False: walked, ~9
                                 # more fp32 instructions an element where fp64 takes 5 on its own pipe, which GPUs
                                 # other than NVIDIA's data-centre parts run at 1/32 to 1/64 of the fp32 rate);
                                 # None: fp64 where utils.fast_fp64 says the GPU has that rate
BWD_MAXNREG = 128  # registers a thread of the backward may use (0: the compiler's choice); a cap that spills more
                   # than 16 bytes a thread runs uncapped (utils.unspilled). 128: two programs of 8 warps an SM, as
                   # the H100 timed at H12 (108 registers then); the step's sums over heads taken at once raised it
                   # to 151 uncapped under Triton 3.6, none spilled at 128. H20 (steps of 4: 252) spills 248
                   # bytes at 128: runs uncapped
BWD_UNROLL = 4   # tokens per unrolled step or tile of the backward walks; 0: UNROLL. The backward holds ~3x the
                 # forward's live tiles (H100 sweep, from a graph, kernels of the time: 0.481 ms forward+backward at 4,
                 # 0.489 at 2, 0.762 at 8, which spilled). Capped by the heads (_tile_tokens): with 8 warps a walked
                 # step holds up to 8 tokens at H12, 4 at H20
CHUNKED = False  # a program per (sequence, group of up to 4 heads, chunk of CHUNKED_TOKENS tokens), tiles of tokens
                 # held in each thread, no barrier between warps, heads unpadded, the softmax over heads between two
                 # launches per direction (causal_tssa_chunks.py); off until a GPU times it against the walks
CHUNKED_TOKENS = 64  # tokens a program of the CHUNKED kernels walks (look-back between chunks)
CHUNKED_TILE = 4   # tokens a tile of the CHUNKED forward (a thread holds 8 channels of each: 32 fp32 a tensor)
CHUNKED_BWD_TILE = 2  # tokens a tile of the CHUNKED backward (it keeps ~3x the forward's tensors live)
CHUNKED_WARPS = 0  # warps a program of the CHUNKED kernels; 0: those that keep the tile's tokens in each thread
CHUNKED_STAGES = 2  # tiles of a CHUNKED walk in flight at once (the next ones' loads issued, through shared memory,
                    # while a tile is computed: Triton's software pipelining; 1: none). A one-warp program holds
                    # ~11 warps an SM at B8 T4096 H12 (175 registers), too few to hide a load's latency otherwise


@triton.jit
def _stat(H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr):
    h = tl.arange(0, HP)[:, None]
    d = tl.arange(0, BD)[None, :]
    return h * D + d, (h < H) & (d < D)


@triton.jit
def _slice(T, per):
    """This program's sequence b, flat slice index k and token range [lo, hi)."""
    b, s = tl.program_id(0), tl.program_id(1)
    lo = s * per
    return b, b * tl.num_programs(1) + s, lo, tl.minimum(lo + per, T)


@triton.jit
def _energy(wr, bias, p0, t, valid, tmax, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
            BOUNDED: tl.constexpr):
    """e [HP] = sum_d wr + D * denom_bias[h, pos0 + t], from wr = w^2 / max(S, eps) [HP, BD]."""
    hc = tl.arange(0, HP)
    e = tl.sum(wr, 1)
    if BOUNDED:
        e += D * tl.load(bias + hc * tmax + p0 + t, mask=(hc < H) & valid, other=0.0)
    return e


@triton.jit
def _valid(t, hi, HP: tl.constexpr):
    """[HP] copies of t < hi (a per-head vector rather than a scalar, so it combines with every mask)."""
    return (tl.zeros([HP], dtype=tl.int32) + t) < hi


@triton.jit
def _row(ptr, b, t, valid, T, C: tl.constexpr, so, sm):
    """Token t of sequence b as [HP, BD] fp32, zeros when not valid."""
    return tl.load(ptr + (b * T + t) * C + so, mask=sm & valid[:, None], other=0.0).to(tl.float32)


@triton.jit
def _token(x, S, A, P, tv, bias, p0, t, valid, tmax, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
           BOUNDED: tl.constexpr):
    """One step of the recurrence: sums after token t (S, A, P), its energy e and Pi [HP], w^2 and 1/max(S, eps)."""
    hc = tl.arange(0, HP)
    wsq = x * x
    S = S + wsq
    rden = _rcp(tl.maximum(S, 1e-12))
    e = _energy(wsq * rden, bias, p0, t, valid, tmax, D, H, HP, BOUNDED)
    z = tl.where(hc < H, e * tv, float("-inf"))
    p = tl.exp(z - tl.max(z, 0))
    pi = tl.where(valid, p * _rcp(tl.sum(p, 0)), 0.0)
    A = A + pi[:, None] * wsq
    P = P + pi
    return S, A, P, e, pi, wsq, rden


@triton.jit
def _walk_wsum(w, b, lo, hi, T, C: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, so, sm):
    """sum of w^2 over tokens [lo, hi) of sequence b -> [HP, BD]."""
    acc = tl.zeros([HP, BD], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        for i in tl.static_range(BT):
            x = _row(w, b, t0 + i, _valid(t0 + i, hi, HP), T, C, so, sm)
            acc += x * x
    return acc


@triton.jit
def _walk_pi(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
             HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, so, sm):
    """From S at token lo: Pi of tokens [lo, hi) (stored) and their sums of Pi w^2 [HP, BD] and Pi [HP]."""
    hc = tl.arange(0, HP)
    A = tl.zeros([HP, BD], dtype=tl.float32)
    P = tl.zeros([HP], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        for i in tl.static_range(BT):
            t = t0 + i
            valid = _valid(t, hi, HP)
            x = _row(w, b, t, valid, T, C, so, sm)
            S, A, P, _, pi, _, _ = _token(x, S, A, P, tv, bias, p0, t, valid, tmax, D, H, HP, BOUNDED)
            tl.store(pi_out + (b * T + t) * H + hc, pi, mask=(hc < H) & valid)
    return A, P


@triton.jit
def _walk_out(w, pi_in, y, A, P, b, lo, hi, T, C: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
              BT: tl.constexpr, so, sm):
    """From the sums A, P at token lo: y of tokens [lo, hi)."""
    hc = tl.arange(0, HP)
    for t0 in range(lo, hi, BT):
        for i in tl.static_range(BT):
            t = t0 + i
            valid = _valid(t, hi, HP)
            x = _row(w, b, t, valid, T, C, so, sm)
            pi = tl.load(pi_in + (b * T + t) * H + hc, mask=(hc < H) & valid, other=0.0)
            px = pi[:, None] * x
            A += px * x
            P += pi
            out = -px * _rcp(1.0 + A * _rcp(P + 1e-8)[:, None])
            tl.store(y + (b * T + t) * C + so, out.to(y.dtype.element_ty), mask=sm & valid[:, None])


@triton.jit
def _wsum(w, b, lo, hi, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BT: tl.constexpr, TILED: tl.constexpr, so, sm):
    if TILED:
        acc = _tile_wsum(w, b, lo, hi, T, C, D, H, HP, BD, BT)
    else:
        acc = _walk_wsum(w, b, lo, hi, T, C, HP, BD, BT, so, sm)
    return acc


@triton.jit
def _pi_sums(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
             HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, TILED: tl.constexpr, so, sm):
    if TILED:
        A, P = _tile_walk_pi(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED)
    else:
        A, P = _walk_pi(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, so, sm)
    return A, P


@triton.jit
def _outputs(w, pi_in, y, A, P, b, lo, hi, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
             BD: tl.constexpr, BT: tl.constexpr, TILED: tl.constexpr, so, sm, P_CHANNELS: tl.constexpr = False):
    if TILED:
        _tile_walk_out(w, pi_in, y, A, P, b, lo, hi, T, C, D, H, HP, BD, BT, P_CHANNELS)
    else:
        _walk_out(w, pi_in, y, A, P, b, lo, hi, T, C, H, HP, BT, so, sm)


@triton.jit
def _f_wsum(w, Wsum, T, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
            BD: tl.constexpr, BT: tl.constexpr, TILED: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    b, k, lo, hi = _slice(T, per)
    if VARLEN:     # as in _f_fused
        r0, T, hi, b = _packed(cu, b, hi)
        w += r0 * C
    so, sm = _stat(H, D, HP, BD)
    tl.store(Wsum + k * H * D + so, _wsum(w, b, lo, hi, T, C, D, H, HP, BD, BT, TILED, so, sm), mask=sm)


@triton.jit
def _f_pi(w, S_start, temp, bias, pos, pi_out, AP, T, tmax, per, C: tl.constexpr, D: tl.constexpr,
          H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr,
          TILED: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    b, k, lo, hi = _slice(T, per)
    p0 = tl.load(pos + b)
    if VARLEN:     # as in _f_fused
        r0, T, hi, b = _packed(cu, b, hi)
        w += r0 * C
        pi_out += r0 * H
    so, sm = _stat(H, D, HP, BD)
    hc = tl.arange(0, HP)
    S = tl.load(S_start + k * H * D + so, mask=sm, other=0.0)
    tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    A, P = _pi_sums(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, TILED, so, sm)
    tl.store(AP + k * (H * D + H) + so, A, mask=sm)
    tl.store(AP + k * (H * D + H) + H * D + hc, P, mask=hc < H)


@triton.jit
def _f_out(w, pi_in, AP_start, y, T, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
           HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, TILED: tl.constexpr,
           P_CHANNELS: tl.constexpr = False, cu=None, VARLEN: tl.constexpr = False):
    b, k, lo, hi = _slice(T, per)
    if VARLEN:     # as in _f_fused
        r0, T, hi, b = _packed(cu, b, hi)
        w += r0 * C
        pi_in += r0 * H
        y += r0 * C
    so, sm = _stat(H, D, HP, BD)
    hc = tl.arange(0, HP)
    A = tl.load(AP_start + k * (H * D + H) + so, mask=sm, other=0.0)
    P = tl.load(AP_start + k * (H * D + H) + H * D + hc, mask=hc < H, other=0.0)
    _outputs(w, pi_in, y, A, P, b, lo, hi, T, C, D, H, HP, BD, BT, TILED, so, sm, P_CHANNELS)


@triton.jit
def _step_gc(m, ge_step, step, i: tl.constexpr, PAIR: tl.constexpr):
    """-d loss / d S_t of the step's token i [HP, BD]: m * its d energy."""
    return _suffix_term(m, tl.sum(tl.where(step == i, ge_step, 0.0), 1)[:, None], PAIR)


@triton.jit
def _b_walk(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0, b, lo, hi, T, tmax,
            C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
            BOUNDED: tl.constexpr, PI_STORED: tl.constexpr, STAGE: tl.constexpr, PAIR: tl.constexpr,
            SPLIT_PI: tl.constexpr, so, sm):
    # Walks tokens [lo, hi) forwards, recomputing the forward sums (S, A, P) from their values at token lo, w and
    # the Pi stored by the forward pass (S only where needed: from stage 2). Ra, Rp, Rc are the gradients flowing
    # into A, P, S at the current token from it and every later token: their value at token lo (what flows in
    # after the slice plus the slice's own direct total) minus what the tokens already walked contributed.
    # STAGE 1: slice totals of the direct d A and d P, and where SPLIT_PI each token's d Pi less its terms in Ra, Rp
    # at token lo (stored in gpi_io: d Pi_t = sum_d (Ra_t w^2 - g x inv) + Rp_t is linear in them).  STAGE 2: d Pi
    # (where SPLIT_PI adding those terms: no dy, no A or P) -> d energy (stored), d temp and d denom_bias (atomics),
    # slice totals of the direct d S (fp64).  STAGE 3: dw.
    # Stage 1 keeps the direct d P (-pi rpe^2 sum_d q A) per channel (GPc) and sums it over d once at the end (and,
    # where SPLIT_PI, for each token together with its part of d Pi).
    hc = tl.arange(0, HP)
    GA = tl.zeros([HP, BD], dtype=tl.float32)
    GPc = tl.zeros([HP, BD], dtype=tl.float32)      # sum over the tokens walked of pi rpe^2 q A
    # d S: its slice total (stage 2) and what flows in at the current token (Rc, stage 3) in fp64 or fp32 pairs
    # (PAIR; see the module docstring)
    GCs, GCl = _suffix_split(tl.zeros([HP, BD], dtype=tl.float64), PAIR)
    Rc, Rl = _suffix_split(Rc, PAIR)
    gt = tl.zeros([HP], dtype=tl.float32)
    tl.static_assert(BT <= 8, "the walked backward keeps at most 8 tokens' d S factors a step")
    step = tl.arange(0, BT)[None, :]
    for t0 in range(lo, hi, BT):
        # stage 2 takes the softmax over heads of the step's tokens at once: their d Pi, Pi and energies gathered as
        # [heads, tokens], and each token's -d e_t / d S_t (m0..m7: steps of at most 8, see _plan) kept until its
        # d energy is known
        pi_step = tl.zeros([HP, BT], dtype=tl.float32)
        gpi_step = tl.zeros([HP, BT], dtype=tl.float32)
        e_step = tl.zeros([HP, BT], dtype=tl.float32)
        m0 = tl.zeros([HP, BD], dtype=tl.float32)
        m1, m2, m3, m4, m5, m6, m7 = m0, m0, m0, m0, m0, m0, m0
        for i in tl.static_range(BT):
            t = t0 + i
            valid = _valid(t, hi, HP)
            x = _row(w, b, t, valid, T, C, so, sm)
            if PI_STORED:
                pi = tl.load(pi_in + (b * T + t) * H + hc, mask=(hc < H) & valid, other=0.0)
                wsq = x * x
                A = A + pi[:, None] * wsq
                P = P + pi
                if STAGE >= 2:
                    S = S + wsq
                    rden = _rcp(tl.maximum(S, 1e-12))
            else:
                S, A, P, e, pi, wsq, rden = _token(x, S, A, P, tv, bias, p0, t, valid, tmax, D, H, HP, BOUNDED)
            if STAGE != 2 or not SPLIT_PI:
                # y = -x pi inv with inv = 1 / (1 + A rpe): with q = g x inv^2, d loss / d A_t = q pi rpe and
                # d loss / d P_t = -pi rpe^2 sum_d q A. The per-head factors are applied once a head (prpe), not
                # once an element: the compiler keeps products in the order written.
                g = _row(gy, b, t, valid, T, C, so, sm)
                rpe = _rcp(P + 1e-8)
                inv = _rcp(1.0 + A * rpe[:, None])
                prpe = pi * rpe
                gi = g * inv
                gxi = gi * x
                q = gxi * inv
            if STAGE >= 2:
                wr = wsq * rden
                m = tl.where(S > 1e-12, wr * rden, 0.0)   # -d e_t / d S_t where the forward's max(S, eps) took S
                if STAGE == 2:
                    if PI_STORED:
                        e = _energy(wr, bias, p0, t, valid, tmax, D, H, HP, BOUNDED)   # for d temp
                    if SPLIT_PI:
                        gpi = tl.load(gpi_io + (b * T + t) * H + hc, mask=(hc < H) & valid, other=0.0) \
                            + tl.sum(Ra * wsq, 1) + Rp
                    else:
                        gpi = tl.sum(Ra * wsq - gxi, 1) + Rp
                    pi_step = tl.where(step == i, pi[:, None], pi_step)
                    gpi_step = tl.where(step == i, gpi[:, None], gpi_step)
                    e_step = tl.where(step == i, e[:, None], e_step)
                    if i == 0:
                        m0 = m
                    if i == 1:
                        m1 = m
                    if i == 2:
                        m2 = m
                    if i == 3:
                        m3 = m
                    if i == 4:
                        m4 = m
                    if i == 5:
                        m5 = m
                    if i == 6:
                        m6 = m
                    if i == 7:
                        m7 = m
                    if not SPLIT_PI:
                        Rp += prpe * rpe * tl.sum(q * A, 1)
                else:
                    ge = tl.load(ge_io + (b * T + t) * H + hc, mask=(hc < H) & valid, other=0.0)
                    # pi (2 Ra x - g inv) + 2 x (ge rden + Rc), its products grouped per head
                    inner = pi[:, None] * Ra + (ge[:, None] * rden + _suffix_value(Rc, Rl, PAIR, tl.float32))
                    grad = (x + x) * inner - pi[:, None] * gi
                    tl.store(dw + (b * T + t) * C + so, grad.to(dw.dtype.element_ty), mask=sm & valid[:, None])
                    # minus the direct d loss / d S_t
                    Rc, Rl = _suffix_add(Rc, Rl, _suffix_term(m, ge[:, None], PAIR), PAIR)
                if STAGE == 3 or not SPLIT_PI:
                    Ra -= q * prpe[:, None]
            else:
                # d Pi_t less sum_d Ra w^2 + Rp at token lo: what the tokens before t took off them, and -g x inv
                # (stored a step at a time: a store a token moves each token's sums between layouts, two barriers)
                if SPLIT_PI:
                    gpi_step = tl.where(step == i, tl.sum(GPc - GA * wsq - gxi, 1)[:, None], gpi_step)
                GA += q * prpe[:, None]
                GPc += (prpe * rpe)[:, None] * (q * A)
        ts = t0 + step
        hm = (hc < H)[:, None] & (ts < hi)
        if STAGE == 1 and SPLIT_PI:
            tl.store(gpi_io + (b * T + ts) * H + hc[:, None], gpi_step, mask=hm)
        if STAGE == 2:
            # one sum over heads (across warps: three barriers) and one store a step, not a token
            gz = tl.where(hm, pi_step * (gpi_step - tl.sum(pi_step * gpi_step, 0)[None, :]), 0.0)   # softmax
            ge_step = gz * tv[:, None]
            gt += tl.sum(gz * e_step, 1)
            # minus the direct d loss / d S_t, token by token
            GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m0, ge_step, step, 0, PAIR), PAIR, True)
            if BT > 1:
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m1, ge_step, step, 1, PAIR), PAIR, True)
            if BT > 2:
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m2, ge_step, step, 2, PAIR), PAIR, True)
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m3, ge_step, step, 3, PAIR), PAIR, True)
            if BT > 4:
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m4, ge_step, step, 4, PAIR), PAIR, True)
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m5, ge_step, step, 5, PAIR), PAIR, True)
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m6, ge_step, step, 6, PAIR), PAIR, True)
                GCs, GCl = _suffix_add(GCs, GCl, _step_gc(m7, ge_step, step, 7, PAIR), PAIR, True)
            tl.store(ge_io + (b * T + ts) * H + hc[:, None], ge_step, mask=hm)
            if BOUNDED:
                tl.atomic_add(gbias + hc[:, None] * tmax + p0 + ts, D * ge_step, mask=hm, sem="relaxed")
    if STAGE == 2:
        tl.atomic_add(gtemp + hc, gt, mask=hc < H, sem="relaxed")
    return GA, -tl.sum(GPc, 1), _suffix_value(GCs, GCl, PAIR, tl.float64)


@triton.jit
def _b_stage(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0, b, lo, hi, T, tmax,
             C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
             BOUNDED: tl.constexpr, PI_STORED: tl.constexpr, STAGE: tl.constexpr, TILED: tl.constexpr,
             PAIR: tl.constexpr, SPLIT_PI: tl.constexpr, so, sm):
    if TILED:
        GA, GP, GC = _tile_b_walk(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0,
                                  b, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, PI_STORED, STAGE, PAIR, SPLIT_PI)
    else:
        GA, GP, GC = _b_walk(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0, b, lo,
                             hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, PI_STORED, STAGE, PAIR, SPLIT_PI, so, sm)
    return GA, GP, GC


@triton.jit
def _b_kernel(w, gy, pi_in, S_start, AP_start, temp, bias, pos, R_end, Rc_end, ge_io, gpi_io, GAP, GC, gtemp,
              gbias, dw, T, tmax, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
              BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, PI_STORED: tl.constexpr,
              STAGE: tl.constexpr, TILED: tl.constexpr, PAIR: tl.constexpr, SPLIT_PI: tl.constexpr,
              DET: tl.constexpr = False, cu=None, VARLEN: tl.constexpr = False):
    # One stage of _b_walk per launch; the gradients flowing in after each slice come from _slice_scan.
    b, k, lo, hi = _slice(T, per)
    p0 = tl.load(pos + b)
    if VARLEN:     # as in _b_fused
        T, hi, b, w, gy, pi_in, ge_io, gpi_io, dw = _packed_backward(cu, b, hi, w, gy, pi_in, ge_io, gpi_io, dw, C, H,
                                                                     PI_STORED)
    if DET:                                         # d temp a row a slice ([B * NT, H]), summed by the host
        gtemp += k * H
    F: tl.constexpr = H * D + H                     # packed rows of the A|P and dA|dP buffers
    so, sm = _stat(H, D, HP, BD)
    hc = tl.arange(0, HP)
    S = tl.load(S_start + k * H * D + so, mask=sm, other=0.0)
    A = tl.load(AP_start + k * F + so, mask=sm, other=0.0)
    P = tl.load(AP_start + k * F + H * D + hc, mask=hc < H, other=0.0)
    tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    Ra = tl.zeros([HP, BD], dtype=tl.float32)
    Rp = tl.zeros([HP], dtype=tl.float32)
    Rc = tl.zeros([HP, BD], dtype=tl.float64)
    if STAGE >= 2:
        Ra = tl.load(R_end + k * F + so, mask=sm, other=0.0) + tl.load(GAP + k * F + so, mask=sm, other=0.0)
        Rp = tl.load(R_end + k * F + H * D + hc, mask=hc < H, other=0.0) \
            + tl.load(GAP + k * F + H * D + hc, mask=hc < H, other=0.0)
    if STAGE == 3:
        Rc = tl.load(Rc_end + k * H * D + so, mask=sm, other=0.0).to(tl.float64) \
            + tl.load(GC + k * H * D + so, mask=sm, other=0.0)
    GA, GP, GCs = _b_stage(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv,
                           p0, b, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, PI_STORED, STAGE, TILED,
                           PAIR, SPLIT_PI, so, sm)
    if STAGE == 1:
        tl.store(GAP + k * F + so, GA, mask=sm)
        tl.store(GAP + k * F + H * D + hc, GP, mask=hc < H)
    if STAGE == 2:
        tl.store(GC + k * H * D + so, GCs, mask=sm)


@triton.jit
def _slice_scan(X, init1, init2, start, fin1, fin2, NS, F1: tl.constexpr, F2: tl.constexpr, NSP: tl.constexpr,
                BF: tl.constexpr, REVERSE: tl.constexpr):
    """Per sequence, over the NS slice totals X [B, NS, F1 + F2]: start[s] = init + sum of the slices before s
    (after s when REVERSE), and fin = init + all of them. init and fin are split in their F1 and F2 columns.
    One program holds all NS slices of BF columns and scans them at once."""
    b, j = tl.program_id(0), tl.program_id(1)
    F: tl.constexpr = F1 + F2
    f = j * BF + tl.arange(0, BF)
    sl = tl.arange(0, NSP)[:, None]                  # the scan's order
    # REVERSE takes the slices last first and scans forwards: Triton's reverse scan compiles to another lowering
    # (sm_90, 32 slices on 8 warps: 164 shuffles against none) that the forward one does not need
    row = NS - 1 - sl if REVERSE else sl             # the slice at that place in the order
    m = (sl < NS) & (f[None, :] < F)
    x = tl.load(X + (b * NS + row) * F + f[None, :], mask=m, other=0.0).to(tl.float32)
    # the exclusive scan is the inclusive scan of the totals shifted by one slice, never inclusive minus own:
    # a slice total can dwarf the others (d S at a sequence's first tokens) and the difference would lose them
    sh = row + 1 if REVERSE else row - 1
    xs = tl.load(X + (b * NS + sh) * F + f[None, :], mask=(sl < NS) & (sh >= 0) & (sh < NS) & (f[None, :] < F),
                 other=0.0).to(tl.float32)
    m1, m2 = f < F1, (f >= F1) & (f < F)
    init = tl.load(init1 + b * F1 + f, mask=m1, other=0.0) + tl.load(init2 + b * F2 + (f - F1), mask=m2, other=0.0)
    excl = tl.cumsum(xs, 0)
    tl.store(start + (b * NS + row) * F + f[None, :], init[None, :] + excl, mask=m)
    run = init + tl.sum(x, 0)
    tl.store(fin1 + b * F1 + f, run, mask=m1)
    tl.store(fin2 + b * F2 + (f - F1), run, mask=m2)


@triton.jit
def _lookback(flags, part, b, s, NS, mat, vec, init_mat, init_vec, so, sm, hc, H: tl.constexpr, HD: tl.constexpr,
              HAS_VEC: tl.constexpr, REVERSE: tl.constexpr, PREFIX: tl.constexpr):
    """Decoupled look-back over the slices of sequence b: publishes this slice's totals (mat [HP, BD], vec [HP]) and
    returns init + the totals of the slices before it (after it when REVERSE), with no pass of its own.

    part holds two rows of F = HD + H per slice (its totals; init + its totals and all before it), flags one int
    per slice (1: totals published, 2: the inclusive row too). Walking towards the sequence's start, a program adds
    the totals it finds until a slice has published its inclusive row. Programs take slices in the order they
    start (the caller's ticket), so every slice waited on belongs to a running or finished program."""
    F: tl.constexpr = HD + H
    row = part + (b * NS + s) * 2 * F
    tl.store(row + so, mat, mask=sm)
    if HAS_VEC:
        tl.store(row + HD + hc, vec, mask=hc < H)
    tl.debug_barrier()                                   # every thread's stores before the flag
    tl.atomic_xchg(flags + b * NS + s, 1, sem="release")
    acc_m = tl.zeros_like(mat)
    acc_v = tl.zeros_like(vec)
    base_m = init_mat
    base_v = init_vec
    j = s + 1 if REVERSE else s - 1
    go = j < NS if REVERSE else j >= 0
    while go:
        f = tl.atomic_add(flags + b * NS + j, 0, sem="acquire")
        while f == 0:
            f = tl.atomic_add(flags + b * NS + j, 0, sem="acquire")
        other = part + (b * NS + j) * 2 * F
        if f == 2:
            base_m = tl.load(other + F + so, mask=sm, other=0.0, cache_modifier=".cg")
            if HAS_VEC:
                base_v = tl.load(other + F + HD + hc, mask=hc < H, other=0.0, cache_modifier=".cg")
            go = False
        else:
            acc_m += tl.load(other + so, mask=sm, other=0.0, cache_modifier=".cg")
            if HAS_VEC:
                acc_v += tl.load(other + HD + hc, mask=hc < H, other=0.0, cache_modifier=".cg")
            j = j + 1 if REVERSE else j - 1
            go = j < NS if REVERSE else j >= 0
    excl_m = base_m + acc_m
    excl_v = base_v + acc_v
    if PREFIX:
        tl.store(row + F + so, excl_m + mat, mask=sm)
        if HAS_VEC:
            tl.store(row + F + HD + hc, excl_v + vec, mask=hc < H)
        tl.debug_barrier()
        tl.atomic_xchg(flags + b * NS + s, 2, sem="release")
    return excl_m, excl_v


@triton.jit
def _ticket(sync, NS, per, T, REVERSE: tl.constexpr):
    """Sequence b, slice s, flat slice index, token range [lo, hi) and the number of sequences of this program,
    slices taken in the order programs start: all sequences' first slices (last when REVERSE), then their second,
    ... (sync[0] counts the programs started)."""
    B = tl.num_programs(0) // NS
    k = tl.atomic_add(sync, 1)
    b = k % B
    s = NS - 1 - k // B if REVERSE else k // B
    lo = s * per
    return b, s, b * NS + s, lo, tl.minimum(lo + per, T), B


@triton.jit
def _packed(cu, b, hi):
    """Packed sequences (VARLEN, cu_seqlens): the first token row of sequence b, its length, the slice's end within
    it, and the sequence index its token rows are addressed with (0: the caller offsets its token pointers by that
    row)."""
    r0 = tl.load(cu + b)
    Tb = tl.load(cu + b + 1) - r0
    return r0, Tb, tl.minimum(hi, Tb), b * 0


@triton.jit
def _packed_backward(cu, b, hi, w, gy, pi_in, ge_io, gpi_io, dw, C: tl.constexpr, H: tl.constexpr,
                     PI_STORED: tl.constexpr):
    """_packed for the backward kernels, with their token pointers offset to sequence b's first row."""
    r0, T, hi, bt = _packed(cu, b, hi)
    return (T, hi, bt, w + r0 * C, gy + r0 * C, pi_in + r0 * (H if PI_STORED else C), ge_io + r0 * H, gpi_io + r0 * H,
            dw + r0 * C)


@triton.jit
def _f_fused(w, temp, bias, pos, S0, A0, P0, pi, y, S_start, AP_start, S_T, A_T, P_T, sync, part, T, tmax, per, NS,
             cu, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
             BT: tl.constexpr, BOUNDED: tl.constexpr, PREFIX: tl.constexpr, TILED: tl.constexpr,
             P_CHANNELS: tl.constexpr = False, VARLEN: tl.constexpr = False):
    # The three forward passes in one program per slice: the sums carried into the slice come from _lookback
    # instead of a scan kernel between launches; the slice is read three times, the last two soon after the first.
    HD: tl.constexpr = H * D
    F: tl.constexpr = HD + H
    b, s, k, lo, hi, nB = _ticket(sync, NS, per, T, False)
    if VARLEN:     # sequence b's tokens start at row cu[b]; a slice past its end walks nothing and adds zeros
        r0, T, hi, bt = _packed(cu, b, hi)
        w += r0 * C
        pi += r0 * H
        y += r0 * C
    else:
        bt = b
    so, sm = _stat(H, D, HP, BD)
    hc = tl.arange(0, HP)
    zv = tl.zeros([HP], dtype=tl.float32)
    Sown = _wsum(w, bt, lo, hi, T, C, D, H, HP, BD, BT, TILED, so, sm)
    S, _ = _lookback(sync + 1, part, b, s, NS, Sown, zv, tl.load(S0 + b * HD + so, mask=sm, other=0.0), zv, so, sm,
                     hc, H, HD, False, False, PREFIX)
    tl.store(S_start + k * HD + so, S, mask=sm)
    tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    Aown, Pown = _pi_sums(w, S, tv, bias, tl.load(pos + b), pi, bt, lo, hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED,
                          TILED, so, sm)
    A, P = _lookback(sync + 1 + nB * NS, part + nB * NS * 2 * F, b, s, NS, Aown, Pown,
                     tl.load(A0 + b * HD + so, mask=sm, other=0.0), tl.load(P0 + b * H + hc, mask=hc < H, other=0.0),
                     so, sm, hc, H, HD, True, False, PREFIX)
    tl.store(AP_start + k * F + so, A, mask=sm)
    tl.store(AP_start + k * F + HD + hc, P, mask=hc < H)
    if s == NS - 1:                                      # the final state
        tl.store(S_T + b * HD + so, S + Sown, mask=sm)
        tl.store(A_T + b * HD + so, A + Aown, mask=sm)
        tl.store(P_T + b * H + hc, P + Pown, mask=hc < H)
    _outputs(w, pi, y, A, P, bt, lo, hi, T, C, D, H, HP, BD, BT, TILED, so, sm, P_CHANNELS)


@triton.jit
def _b_fused(w, gy, pi_in, S_start, AP_start, temp, bias, pos, gS_T, gA_T, gP_T, ge_io, gpi_io, gtemp, gbias, dw, gS0,
             gA0, gP0, sync, part, part64, T, tmax, per, NS, cu, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
             HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, PI_STORED: tl.constexpr,
             PREFIX: tl.constexpr, TILED: tl.constexpr, PAIR: tl.constexpr, SPLIT_PI: tl.constexpr,
             VARLEN: tl.constexpr = False):
    # The three backward stages in one program per slice, slices taken from a sequence's end: what flows in after
    # the slice comes from _lookback over the later slices. The barrier each look-back starts with also orders what
    # a stage stored per token (d Pi's parts, d e) before the next stage's threads read it back.
    HD: tl.constexpr = H * D
    F: tl.constexpr = HD + H
    b, s, k, lo, hi, nB = _ticket(sync, NS, per, T, True)
    if VARLEN:     # as in _f_fused
        T, hi, bt, w, gy, pi_in, ge_io, gpi_io, dw = _packed_backward(cu, b, hi, w, gy, pi_in, ge_io, gpi_io, dw, C, H,
                                                                      PI_STORED)
    else:
        bt = b
    so, sm = _stat(H, D, HP, BD)
    hc = tl.arange(0, HP)
    S = tl.load(S_start + k * HD + so, mask=sm, other=0.0)
    A = tl.load(AP_start + k * F + so, mask=sm, other=0.0)
    P = tl.load(AP_start + k * F + HD + hc, mask=hc < H, other=0.0)
    tv = tl.load(temp + hc, mask=hc < H, other=0.0)
    p0 = tl.load(pos + b)
    zm = tl.zeros([HP, BD], dtype=tl.float32)
    zv = tl.zeros([HP], dtype=tl.float32)
    z64 = tl.zeros([HP, BD], dtype=tl.float64)
    GA, GP, _ = _b_stage(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, zm, zv, z64, tv, p0, bt, lo,
                         hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, PI_STORED, 1, TILED, PAIR, SPLIT_PI, so, sm)
    Ra, Rp = _lookback(sync + 1, part, b, s, NS, GA, GP, tl.load(gA_T + b * HD + so, mask=sm, other=0.0),
                       tl.load(gP_T + b * H + hc, mask=hc < H, other=0.0), so, sm, hc, H, HD, True, True, PREFIX)
    Ra += GA
    Rp += GP
    if s == 0:                                           # the initial state's gradients
        tl.store(gA0 + b * HD + so, Ra, mask=sm)
        tl.store(gP0 + b * H + hc, Rp, mask=hc < H)
    _, _, GC = _b_stage(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, z64, tv, p0, bt, lo,
                        hi, T, tmax, C, D, H, HP, BD, BT, BOUNDED, PI_STORED, 2, TILED, PAIR, SPLIT_PI, so, sm)
    Rc, _ = _lookback(sync + 1 + nB * NS, part64, b, s, NS, GC, zv.to(tl.float64),
                      tl.load(gS_T + b * HD + so, mask=sm, other=0.0).to(tl.float64), zv.to(tl.float64), so, sm, hc,
                      H, HD, False, True, PREFIX)
    Rc += GC
    if s == 0:
        tl.store(gS0 + b * HD + so, Rc.to(tl.float32), mask=sm)
    _b_stage(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0, bt, lo, hi, T, tmax,
             C, D, H, HP, BD, BT, BOUNDED, PI_STORED, 3, TILED, PAIR, SPLIT_PI, so, sm)


def _scan(X, init1, init2, start, fin1, fin2=None, reverse=False):
    """_slice_scan of X [B, NS, F] into start [B, NS, F], fin1 [B, F1] and fin2 [B, F2]; init2 / fin2 may be None
    (F2 = 0)."""
    B, NS, F = X.shape
    F1 = init1[0].numel()
    F2 = F - F1
    init2 = init1 if init2 is None else init2
    fin2 = fin1 if fin2 is None else fin2
    NSP = max(2, next_pow2(NS))
    BF = max(16, min(next_pow2(F), 4096 // NSP))       # tiles of at most 4096 fp32
    _slice_scan[(B, cdiv(F, BF))](X, init1, init2, start, fin1, fin2, NS, F1, F2, NSP, BF, reverse,
                                   **launch_options(8, 0))


def _groups(B: int, group: int):
    """(sequences, view of a [B, ...] tensor) per group the passes run over one after another (tssa.batch_groups):
    with group = g > 0 (L2_GROUP) every pass runs on g sequences before the next g start, so that what a later pass
    reads again can still be in L2."""
    return batch_groups(B, group)


def _slicing(T: int, B: int, max_tokens: int = 1 << 30):
    """Tokens per unrolled step or tile BT, slices per sequence and tokens per slice."""
    B = torch.sym_min(B, L2_GROUP) if L2_GROUP > 0 else B     # sequences per launch
    BT = next_pow2_capped(T, max(1, min(UNROLL, max_tokens)))
    NT = cdiv(T, BT)
    # slices of whole unrolled steps, one program each: enough programs to fill a large GPU (sym_min / sym_max:
    # under torch.compile with dynamic shapes, an expression of the length rather than a guard on it)
    slices = torch.sym_max(1, torch.sym_min(NT, cdiv(PROGRAMS, torch.sym_max(B, 1))))
    per = cdiv(NT, slices) * BT
    return BT, cdiv(T, per), per


def _tile_warps(HP: int, BD: int, itemsize: int) -> int:
    """Warps that lay a [tokens, HP, BD] tile out with every token of a (head, channels) slot in one thread: a load
    gives each thread 16 bytes of channels, a warp's lanes cover BD channels of 32 * vec / BD heads, and the warps
    cover the rest of the heads, leaving no lane or warp to the token axis (cumulative sums over it stay in
    registers; only the softmax over heads crosses warps)."""
    vec = max(1, 16 // itemsize)
    lanes_d = max(1, min(32, BD // vec))
    return max(1, min(8, HP // max(1, 32 // lanes_d)))


def _options(backward: bool, tiled: bool, HP: int, BD: int, itemsize: int) -> dict:
    """Launch options of the walks: their warps, and the register caps (the tiled forward's, the backward's)."""
    cap = BWD_MAXNREG if backward else (TILED_MAXNREG if tiled else 0)
    if tiled:
        nw = TILED_WARPS if TILED_WARPS > 0 else _tile_warps(HP, BD, itemsize)
    else:
        nw = BWD_WARPS if backward else WARPS
    return {"num_warps": nw, **({"maxnreg": cap} if cap > 0 else {})}


def _bwd_tokens(T: int, BT: int, max_tokens: int = 1 << 30) -> int:
    return next_pow2_capped(T, max(1, min(BWD_UNROLL, max_tokens))) if BWD_UNROLL > 0 else min(BT, max_tokens)


def _tile_tokens(HP: int, BD: int, warps: int, per_thread: int) -> int:
    """The most tokens a tile or unrolled step may hold for each of its [tokens, HP, BD] tensors to take at most
    per_thread registers a thread: the tiled forward keeps ~3 such tensors live (64 fit), the tiled backward ~7 (32
    fit); larger tiles spill. The walked backward's steps are capped at 32 as well: its stage 2 takes one sum over
    heads a step, so a longer step waits at fewer barriers a token (sm_90, Triton 3.6, 8 warps, H20: steps of 4
    tokens 1.75 against 3.5 for steps of 2, 252 registers, nothing spilled; `compile_report.py --layouts`). (When
    that sum was taken a token, steps of 32 a thread doubled the barriers, and on an H100 steps of 8 tokens at H12,
    which spilled then, ran 0.76 ms forward+backward against 0.48 for steps of 4.)"""
    return max(1, per_thread * 32 * warps // (HP * BD))


def _plan(B: int, T: int, H: int, D: int, itemsize: int, device: torch.device | None = None,
          packed: bool = False) -> list:
    """How both directions of one call run, whatever the settings are by the backward pass: [BD, HP, BT (tokens a
    forward step or tile), NT (slices a sequence), per (tokens a slice), backward tokens a step or tile, FUSED, TILED,
    BWD_TILED, SAVE_PI, L2_GROUP, LOOKBACK_PREFIX, forward warps, forward register cap, backward warps, backward
    register cap, d S summed in fp64 (SUFFIX_FP64 as decided for the device), CHUNKED, CHUNKED_STAGES (0 for the
    walks), BWD_SPLIT_PI (0 for CHUNKED), deterministic]. CHUNKED plans chunks of CHUNKED_TOKENS tokens (per, NT
    chunks a sequence) walked in tiles of CHUNKED_TILE (BT) and CHUNKED_BWD_TILE tokens, the same warps both ways, Pi
    saved."""
    BD, HP = max(2, next_pow2(D)), max(2, next_pow2(H))
    fp64 = int(fast_fp64(device) if SUFFIX_FP64 is None else SUFFIX_FP64)
    det = torch.are_deterministic_algorithms_enabled()
    if CHUNKED and not det and not packed:
        BT, bwd_BT = (next_pow2_capped(T, next_pow2(n)) for n in (CHUNKED_TILE, CHUNKED_BWD_TILE))
        per = max(BT, bwd_BT) * cdiv(torch.sym_min(CHUNKED_TOKENS, T), max(BT, bwd_BT))   # whole tiles both ways
        warps = CHUNKED_WARPS or _tile_warps(chunks.group_size(H), BD, itemsize)
        return [BD, HP, BT, cdiv(T, per), per, bwd_BT, int(FUSED), 0, 0, 1, 0, int(LOOKBACK_PREFIX), warps, 0,
                warps, 0, fp64, 1, CHUNKED_STAGES, 0, 0]
    tiled, bwd_tiled = TILED, BWD_TILED
    opts = _options(False, tiled, HP, BD, itemsize)
    bwd_opts = _options(True, bwd_tiled, HP, BD, itemsize)
    BT, NT, per = _slicing(T, B, _tile_tokens(HP, BD, opts["num_warps"], 64) if tiled else 1 << 30)
    walk_cap = 1 << 30 if bwd_tiled else 8       # the walked backward keeps at most 8 tokens' d S factors a step
    bwd_tokens = _bwd_tokens(T, BT, min(_tile_tokens(HP, BD, bwd_opts["num_warps"], 32), walk_cap))
    # deterministic: the three-pass scheme in one group (decoupled look-back sums a slice's predecessors in the
    # order they finish), d temp a row a slice and d denom_bias from the stored d energy (_backward)
    # packed sequences (cu_seqlens): the fused scheme (deterministic: the three-pass one), the whole batch at once
    return [BD, HP, BT, NT, per, bwd_tokens, int((FUSED or packed) and not det), int(tiled), int(bwd_tiled),
            int(SAVE_PI), 0 if det or packed else L2_GROUP, int(LOOKBACK_PREFIX), opts["num_warps"],
            opts.get("maxnreg", 0), bwd_opts["num_warps"], bwd_opts.get("maxnreg", 0), fp64, 0, 0, int(BWD_SPLIT_PI),
            int(det)]


@on_input_device
def _forward(w, temp, bias, pos, S0, A0, P0, H: int, bounded: bool, plan: list, sync=None, cu=None):
    """w: [B, T, C] contiguous, temp: [H], bias: [H, Tmax] fp32, pos: [B] int64, S0, A0: [B, H, D], P0: [B, H] fp32
    -> y [B, T, C], the final state S_T, A_T, P_T, and for the backward Pi [B, T, H] (empty where the plan does not
    save it) and the sums at each slice's start, S_start [B, NT, H * D] and AP_start [B, NT, H * D + H]. sync: the
    fused scheme's zeroed look-back counters for the whole batch (_zero_filled), or None to allocate them.
    cu: packed sequences (the fused scheme): w [1, total, C] holds B sequences, sequence b its tokens
    [cu[b], cu[b + 1]) (int32 [B + 1]), the plan made for the longest; y and Pi are packed alike."""
    B, T, C = w.shape
    if cu is not None:
        B, T = pos.shape[0], plan[3] * plan[4]        # T: slices x tokens a slice, at least the longest
    D = C // H
    BD, HP, BT, NT, per, _, fused, tiled, _, save_pi, l2_group, prefix, warps, maxnreg, _, _, _, chunked, stages, \
        _, _ = plan
    if chunked:
        return chunks.forward(w, temp, bias, pos, S0, A0, P0, H, bounded, BD, HP, BT, per, NT, bool(prefix), warps,
                              stages)
    opts = launch_options(warps, maxnreg)
    p_ch = bool(tiled) and p_channels(warps)
    tmax = bias.shape[1]
    HD = H * D
    S_start, AP_start = alloc(B, NT, HD, like=w, dtype=torch.float32), alloc(B, NT, HD + H, like=w,
                                                                              dtype=torch.float32)
    if not fused:                                     # slice totals, for the scan kernels
        Wsum, AP = alloc(B, NT, HD, like=w, dtype=torch.float32), alloc(B, NT, HD + H, like=w, dtype=torch.float32)
    S_T, A_T, P_T = alloc(*S0.shape, like=S0), alloc(*A0.shape, like=A0), alloc(*P0.shape, like=P0)
    pi = alloc(*w.shape[:2], H, like=w, dtype=torch.float32)
    y = alloc(*w.shape, like=w)
    for nb, g in _groups(B, l2_group):
        if fused:
            counters = sync if sync is not None and nb == B else torch.zeros(1 + 2 * nb * NT, device=w.device,
                                                                             dtype=torch.int32)
            part = alloc(2 * nb * NT * 2 * (HD + H), like=w, dtype=torch.float32)
            _f_fused[(nb * NT,)](g(w), temp, bias, g(pos), g(S0), g(A0), g(P0), g(pi), g(y), g(S_start),
                                 g(AP_start), g(S_T), g(A_T), g(P_T), counters, part, T, tmax, per, NT,
                                 pos if cu is None else cu, C, D, H, HP, BD, BT, bounded, bool(prefix), bool(tiled),
                                 P_CHANNELS=p_ch, VARLEN=cu is not None, **opts)
            continue
        grid = (nb, NT)
        varlen = {} if cu is None else dict(cu=cu, VARLEN=True)        # (packed: one group, no L2 grouping)
        _f_wsum[grid](g(w), g(Wsum), T, per, C, D, H, HP, BD, BT, bool(tiled), **varlen, **opts)
        _scan(g(Wsum), g(S0), None, g(S_start), g(S_T))
        _f_pi[grid](g(w), g(S_start), temp, bias, g(pos), g(pi), g(AP), T, tmax, per, C, D, H, HP, BD, BT,
                    bounded, bool(tiled), **varlen, **opts)
        _scan(g(AP), g(A0), g(P0), g(AP_start), g(A_T), g(P_T))
        _f_out[grid](g(w), g(pi), g(AP_start), g(y), T, per, C, D, H, HP, BD, BT, bool(tiled), P_CHANNELS=p_ch,
                     **varlen, **opts)
    return y, S_T, A_T, P_T, pi if save_pi else pi.new_empty(0), S_start, AP_start


def _slice_rows(rows: int, H: int, device) -> torch.Tensor:
    """Deterministic d temp: a zeroed row for each slice's sum ([B * NT, H]), summed by the host in a fixed order
    (atomic adds into one [H] would sum them in whatever order the programs run)."""
    return torch.zeros(rows, H, device=device, dtype=torch.float32)


@on_input_device
def _backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, H: int, bounded: bool, plan: list,
              cu=None):
    """dw [B, T, C] and the fp32 gradients of temp [H], denom_bias [H, Tmax] and the initial state, from gy and the
    final state's gradients (None: zero) and what _forward returned (pi empty: recomputed); cu: as _forward's."""
    B, T, C = w.shape
    if cu is not None:
        B, T = pos.shape[0], plan[3] * plan[4]
    D = C // H
    BD, HP, _, NT, per, BT, fused, _, tiled, stored, l2_group, prefix, _, _, bwd_warps, bwd_maxnreg, fp64, chunked, \
        stages, split, det = plan
    stored, opts, pair = bool(stored), launch_options(bwd_warps, bwd_maxnreg), not fp64
    tmax = bias.shape[1]
    dev = w.device
    gy = torch.zeros_like(w) if gy is None else gy.contiguous()
    groups = _groups(B, l2_group)
    # one zeroed workspace, one fill: the fused kernels' counters (first, in whole 16 bytes, so that what follows is
    # aligned as a fresh allocation would be), d temp and d denom_bias (accumulated with atomics) and the absent
    # state gradients
    counters = [1 + 2 * nb * NT if fused and not chunked else 0 for nb, _ in groups]
    lead = cdiv(sum(counters), 4) * 4
    n, m = B * H * D, B * H
    ws = torch.zeros(lead + H + bias.numel() + 2 * n + m, device=dev, dtype=torch.float32)
    syncs = ws[:sum(counters)].view(torch.int32).split(counters)
    gtemp, gbias = ws[lead:lead + H], ws[lead + H:lead + H + bias.numel()].view(bias.shape)
    zS, zA, zP = ws[lead + H + bias.numel():].split([n, n, m])
    gS_T = zS.view(B, H, D) if gS_T is None else gS_T.float().contiguous()
    gA_T = zA.view(B, H, D) if gA_T is None else gA_T.float().contiguous()
    gP_T = zP.view(B, H) if gP_T is None else gP_T.float().contiguous()
    if chunked:
        dw, gS0, gA0, gP0 = chunks.backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, gtemp,
                                            gbias, H, bounded, BD, HP, BT, per, NT, bool(prefix), bwd_warps, pair,
                                            stages)
        return dw, gtemp, gbias, gS0, gA0, gP0
    if not fused:                                     # slice totals and what flows in after each slice
        GAP, R_end = (alloc(B, NT, H * D + H, like=w, dtype=torch.float32) for _ in range(2))
        GC = alloc(B, NT, H * D, like=w, dtype=torch.float64)
        Rc_end = alloc(B, NT, H * D, like=w, dtype=torch.float32)
    gS0, gA0, gP0 = alloc(B, H, D, like=w, dtype=torch.float32), alloc(B, H, D, like=w, dtype=torch.float32), \
        alloc(B, H, like=w, dtype=torch.float32)
    ge = alloc(*w.shape[:2], H, like=w, dtype=torch.float32)
    gpi = alloc(*w.shape[:2], H, like=w, dtype=torch.float32) if split else ge     # d Pi's parts (SPLIT_PI)
    dw = alloc(*w.shape, like=w)
    for (nb, g), sync in zip(groups, syncs):
        if fused:
            part = alloc(nb * NT * 2 * (H * D + H), like=w, dtype=torch.float32)
            part64 = alloc(nb * NT * 2 * (H * D + H), like=w, dtype=torch.float64)
            args = (g(w), g(gy), g(pi) if stored else g(w), g(S_start), g(AP_start), temp, bias, g(pos), g(gS_T),
                    g(gA_T), g(gP_T), g(ge), g(gpi), gtemp, gbias, g(dw), g(gS0), g(gA0), g(gP0), sync, part, part64, T,
                    tmax, per, NT, pos if cu is None else cu, C, D, H, HP, BD, BT, bounded, stored, bool(prefix),
                    bool(tiled), pair, bool(split), cu is not None)
            _b_fused[(nb * NT,)](*args, **unspilled(_b_fused, (nb * NT,), args, opts))
            continue
        grid = (nb, NT)
        args = (g(w), g(gy), g(pi) if stored else g(w), g(S_start), g(AP_start), temp, bias, g(pos))
        if det:   # d temp a row a slice, summed below; d denom_bias's atomics go to a scratch copy, unread
            gT, scratch = _slice_rows(nb * NT, H, dev), alloc(*gbias.shape, like=gbias)
        tail = (gT if det else gtemp, scratch if det else gbias, g(dw), T, tmax, per, C, D, H, HP, BD, BT, bounded,
                stored)
        tiled = bool(tiled)
        # (packed: DET, the offsets and VARLEN positional, so that unspilled's key holds the offsets' dtype)
        last = (bool(det),) if cu is None else (bool(det), cu, True)
        stage = [(*args, g(GAP), g(GC), g(ge), g(gpi), g(GAP), g(GC), *tail, 1, tiled, pair, bool(split), *last),
                 (*args, g(R_end), g(GC), g(ge), g(gpi), g(GAP), g(GC), *tail, 2, tiled, pair, bool(split), *last),
                 (*args, g(R_end), g(Rc_end), g(ge), g(gpi), g(GAP), g(GC), *tail, 3, tiled, pair, bool(split), *last)]
        _b_kernel[grid](*stage[0], **unspilled(_b_kernel, grid, stage[0], opts))
        _scan(g(GAP), g(gA_T), g(gP_T), g(R_end), g(gA0), g(gP0), reverse=True)  # flowing in after each slice
        _b_kernel[grid](*stage[1], **unspilled(_b_kernel, grid, stage[1], opts))
        _scan(g(GC), g(gS_T), None, g(Rc_end), g(gS0), reverse=True)
        _b_kernel[grid](*stage[2], **unspilled(_b_kernel, grid, stage[2], opts))
        if det:
            torch.sum(gT, 0, out=gtemp)
            if bounded:       # d denom_bias[h, pos_b + t] = D * sum over b of d energy[b, t, h], in a fixed order
                if cu is None:
                    at = g(pos)[:, None, None] + torch.arange(T, device=dev)[None, :, None]          # [B, T, 1]
                else:         # packed: a token's sequence's start position plus its place in the sequence
                    seq, within = sequence_positions(cu, w.shape[1])
                    at = (pos[seq] + within)[None, :, None]                                   # [1, total, 1]
                with deterministic_algorithms():     # (whatever the flag is by now: the plan chose this scheme)
                    gbias.index_put_((torch.arange(H, device=dev)[None, None, :], at), D * g(ge), accumulate=True)
    return dw, gtemp, gbias, gS0, gA0, gP0


class CausalTSSAFunction(torch.autograd.Function):
    """Eager autograd over _forward / _backward (under torch.compile the custom ops below run instead)."""

    @staticmethod
    def forward(ctx, w, temp, bias, pos, S0, A0, P0, H, bounded, plan, sync, cu=None):
        ctx.set_materialize_grads(False)    # an unused output's gradient stays None: no zero-filled tensor
        y, S_T, A_T, P_T, *saved = _forward(w, temp, bias, pos, S0, A0, P0, H, bounded, plan, sync, cu)
        ctx.save_for_backward(w, temp, bias, pos, *saved, cu)
        ctx.H, ctx.bounded, ctx.plan = H, bounded, plan
        return y, S_T, A_T, P_T

    @staticmethod
    def backward(ctx, gy, gS_T, gA_T, gP_T):
        w, temp, bias, pos, pi, S_start, AP_start, cu = ctx.saved_tensors
        dw, gtemp, gbias, gS0, gA0, gP0 = _backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start,
                                                    ctx.H, ctx.bounded, ctx.plan, cu)
        grads = first_order("causal_tssa", (dw, gtemp, gbias if ctx.bounded else None, gS0, gA0, gP0),
                            (w, temp, bias))
        return *grads[:3], None, *grads[3:], None, None, None, None, None


# (cu: packed sequences' int32 offsets [B + 1] for w [1, total, C], or None)
@torch.library.custom_op("tost_edge::causal_tssa_triton_forward", mutates_args=())
def _forward_op(w: Tensor, temp: Tensor, bias: Tensor, pos: Tensor, S0: Tensor, A0: Tensor, P0: Tensor, H: int,
                bounded: bool, plan: List[int],
                cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(w, temp, bias, pos, S0, A0, P0, H, bounded, plan, None, cu)


@_forward_op.register_fake
def _(w, temp, bias, pos, S0, A0, P0, H, bounded, plan, cu):
    B, T, C = w.shape
    NB = pos.shape[0]                                   # (sequences: B, or those packed in w)
    NT, f32 = plan[3], dict(dtype=torch.float32)
    return (torch.empty_like(w), torch.empty_like(S0), torch.empty_like(A0), torch.empty_like(P0),
            w.new_empty((B, T, H) if plan[9] else (0,), **f32), w.new_empty(NB, NT, C, **f32),
            w.new_empty(NB, NT, C + H, **f32))


@torch.library.custom_op("tost_edge::causal_tssa_triton_backward", mutates_args=())
def _backward_op(gy: Optional[Tensor], gS_T: Optional[Tensor], gA_T: Optional[Tensor], gP_T: Optional[Tensor],
                 w: Tensor, pi: Tensor, temp: Tensor, bias: Tensor, pos: Tensor, S_start: Tensor, AP_start: Tensor,
                 H: int, bounded: bool, plan: List[int],
                 cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(t.clone() if t._base is not None else t for t in   # outputs may not share memory
                 _backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, H, bounded, plan, cu))


@_backward_op.register_fake
def _(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, H, bounded, plan, cu):
    B, C = pos.shape[0], w.shape[2]
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(w), temp.new_empty(H, **f32), bias.new_empty(bias.shape, **f32),
            w.new_empty(B, H, C // H, **f32), w.new_empty(B, H, C // H, **f32), w.new_empty(B, H, **f32))


def _setup_context(ctx, inputs, output):
    w, temp, bias, pos, S0, A0, P0, H, bounded, plan, cu = inputs
    ctx.save_for_backward(w, temp, bias, pos, *output[4:], cu)
    ctx.H, ctx.bounded, ctx.plan = H, bounded, plan
    ctx.mark_non_differentiable(*output[4:])
    ctx.set_materialize_grads(False)


def _op_backward(ctx, gy, gS_T, gA_T, gP_T, *_):
    w, temp, bias, pos, pi, S_start, AP_start, cu = ctx.saved_tensors
    dw, gtemp, gbias, gS0, gA0, gP0 = _backward_op(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start,
                                                   ctx.H, ctx.bounded, ctx.plan, cu)
    return dw, gtemp, gbias if ctx.bounded else None, None, gS0, gA0, gP0, None, None, None, None


_forward_op.register_autograd(_op_backward, setup_context=_setup_context)


from . import causal_tssa_chunks as chunks  # noqa: E402  (its kernels reuse this module's look-back)


def _zero_filled(B: int, H: int, D: int, state, pos, device, counters: int = 0):
    """The forward's zero-filled inputs in one allocation and one memset, where a call had three fills: the initial
    state where none was given (None), the positions of an int start 0 (another int: a fill of its own), and
    `counters` int32 look-back counters. Each part starts on 16 bytes, as a fresh allocation would (the kernels
    specialise on that). -> (state, positions [B] int64, counters or None)."""
    zero_start = isinstance(pos, int) and pos == 0
    sizes = [cdiv(k, 4) * 4 for k in (B * H * (2 * D + 1) if state is None else 0, 2 * B if zero_start else 0,
                                      counters)]
    buf = torch.zeros(sum(sizes), device=device, dtype=torch.float32) if any(sizes) else None
    if state is None:
        state = CausalTSSAState.over(buf, B, H, D)
    if zero_start:
        pos = buf[sizes[0]:sizes[0] + 2 * B].view(torch.int64)
    elif isinstance(pos, int):
        pos = torch.full((B,), pos, dtype=torch.long, device=device)
    at = sizes[0] + sizes[1]
    return state, pos, buf[at:at + counters].view(torch.int32) if counters else None


def triton_causal_tssa(w, temp, denom_bias, num_heads, state=None, pos0=0):
    """Chunked causal TSSA; same contract as tost_edge.ops.causal_tssa (w: [B, T, C], state fp32)."""
    compiling = torch.compiler.is_compiling()
    B, T, H, D, temp, bias, state, pos = prepare(w, temp, denom_bias, num_heads, state, pos0, fill=compiling)
    check_dtype("w", w)
    check_available(w, temp)
    runs = batch_runs(B, T * H * D, "w")
    if T == 0 or len(runs) > 1:
        state, pos, _ = _zero_filled(B, H, D, state, pos, w.device)
    if T == 0:
        return w.clone(), state
    if len(runs) > 1:
        return join_runs([triton_causal_tssa(w[r], temp, denom_bias, num_heads,
                                             CausalTSSAState(*(s[r] for s in state)), pos[r]) for r in runs])
    bounded = bias is not None
    temp = temp.float().contiguous()
    # a position-free model's kernels never read the bias (BOUNDED off): any [H, 1] fp32 tensor stands in, with no fill
    bias_t = bias.float() if bounded else temp.view(H, 1)
    plan = _plan(B, T, H, D, w.element_size(), w.device)
    one_launch = plan[6] and not plan[17] and (plan[10] <= 0 or plan[10] >= B)   # fused, the whole batch at once
    state, pos, sync = _zero_filled(B, H, D, state, pos, w.device, 1 + 2 * B * plan[3] if one_launch and not
                                    compiling else 0)
    args = (w.contiguous(), temp, bias_t.contiguous(), pos.contiguous(),
            *(s.float().contiguous() for s in state), H, bounded, plan)
    if compiling:   # opaque to the compiler: one node per direction, no graph break
        y, S, A, P = _forward_op(*args, None)[:4]
    else:
        y, S, A, P = CausalTSSAFunction.apply(*args, sync)
    return y, CausalTSSAState(S, A, P)


def triton_causal_tssa_packed(w, temp, denom_bias, num_heads, cu, state=None, pos0=0, max_seqlen=None):
    """Causal TSSA of packed sequences (the contract of tost_edge.ops.causal_tssa with cu_seqlens): w [1, total, C],
    sequence b its tokens [cu[b], cu[b + 1]) (cu: checked host ints, or a tensor of offsets whose values are not
    read on the host, which needs max_seqlen), each from its own state and position. max_seqlen: at least the
    longest sequence's length (the launch is sized for it; its slices past a shorter sequence's end walk nothing)."""
    compiling = torch.compiler.is_compiling()
    on_host = not isinstance(cu, Tensor)
    N, C = (len(cu) if on_host else cu.shape[0]) - 1, w.shape[2]
    _, _, H, D, temp, bias, state, pos = prepare(w.new_empty((N, 0, C)), temp, denom_bias, num_heads, state, pos0,
                                                 fill=False)
    check_dtype("w", w)
    check_available(w, temp)
    T = packed_length(w, cu, max_seqlen)
    if on_host:
        if bias is not None and N:                 # each sequence's last position within the position table
            starts = pos.tolist() if isinstance(pos, torch.Tensor) else [int(pos)] * N
            end = max(p + e - a for p, a, e in zip(starts, cu, cu[1:]))
            if end > bias.shape[1]:
                raise ValueError(f"pos0 + T: expected at most denom_bias.shape[1] = {bias.shape[1]} (the model's "
                                 f"position range) for every sequence, got {end}")
    elif bias is not None and isinstance(pos, int) and pos + T > bias.shape[1]:
        raise ValueError(f"pos0 + max_seqlen: expected at most denom_bias.shape[1] = {bias.shape[1]} (the model's "
                         f"position range), got {pos + T}")
    if T == 0 or w.shape[1] == 0:
        state, _, _ = _zero_filled(N, H, D, state, pos, w.device)
        return w.clone(), state
    bounded = bias is not None
    temp = temp.float().contiguous()
    bias_t = bias.float() if bounded else temp.view(H, 1)
    plan = _plan(N, T, H, D, w.element_size(), w.device, packed=True)
    state, pos, sync = _zero_filled(N, H, D, state, pos, w.device, 1 + 2 * N * plan[3] if plan[6] and not
                                    compiling else 0)
    cu_t = device_offsets(cu, w.device) if on_host else \
        cu.to(w.device, torch.int32)
    args = (w.contiguous(), temp, bias_t.contiguous(), pos.contiguous(), *(s.float().contiguous() for s in state), H,
            bounded, plan)
    if compiling:   # opaque to the compiler: one node per direction, no graph break
        y, S, A, P = _forward_op(*args, cu_t)[:4]
    else:
        y, S, A, P = CausalTSSAFunction.apply(*args, sync, cu_t)
    return y, CausalTSSAState(S, A, P)
