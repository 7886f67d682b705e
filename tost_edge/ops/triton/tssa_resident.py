"""TSSA with w held on chip: each batch element's tokens are cut into NS slices, one program per slice, and a
program keeps its slice of w (backward: w and dy) in registers from its load to its last use, across the grid-wide
waits for the statistics that all NS slices contribute to.

The three-pass kernels (tssa.py) read w three times forward and three times backward: 10 units of w's size for
forward+backward against the 5 (read w, write y; read w and dy, write dw) that the resident kernels move
(RESIDENT_KEEP_DY = False: 6, the backward reading dy again for dw instead of holding it).

A head's channels are held as one part padded to a power of two or, for a head of three times a power of two (48),
as three unpadded parts of one shape (parts()); every step below runs once per part, and the per-token values
(energy, Pi, r, d energy) sum the parts' shares.

What it costs: the NS programs of a batch element wait for each other twice per direction, so they must be resident
at once. Programs take their (batch element, slice) by ticket: a batch element's slices are consecutive tickets,
taken only by programs already running, so while the card holds at least NS programs of the kernel the programs
waiting on a batch element are never all waiting for one that cannot start. The launch checks that count (the
occupancy of the compiled kernel, from its registers and shared memory) and declines where it falls short; the
caller then runs the passes. (A kernel on another stream that never ends, such as a persistent communication kernel
holding SMs, or an MPS limit on the share of SMs a process may use, can take away programs the count relies on:
leave RESIDENT off there.)

Forward, per program:  load w;  S += sum w^2;                          wait for all NS
                       Pi (stored), A += sum Pi w^2, P += sum Pi;      wait for all NS
                       y = -w Pi / (1 + A / (P + eps))                 (store y)
Backward, per program: load w, dy, Pi;  G += ..., r per token (kept);  wait for all NS
                       d energy (kept), dS, d temp;                    wait for all NS
                       dw                                              (store dw)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tssa_tile import NORM_EPS_SQ, PI_EPS, _arrive_and_wait, _d_softmax_heads, _grad_w_dy, _grad_w_x, _rows, \
    _softmax_heads, _stat
from .utils import cdiv, interpreting, launch_options, next_pow2, spilled

INTERPRET_TOKENS = 512  # the interpreter runs programs one after another, so a slice there is the whole sequence


@triton.jit
def _ticket(sync, NS, BN: tl.constexpr):
    """(batch element, first token, its two arrival counters) of this program's slice, and an opaque 0 (the salt
    of widenings before the first wait)."""
    k = tl.atomic_add(sync, 1)
    b = k // NS
    return b, (k % NS) * BN, sync + 1 + 2 * b, (k.to(tl.uint32) >> 31).to(tl.int32)   # last: 0 (tickets < 2^31)


@triton.jit
def _hold(ptr, b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    """Channels [c0, c0 + W) of each head (a part, see parts()) of tokens [n0, n0 + BN) of batch element b, in the
    form a program holds them across the waits. PACKED (16-bit inputs, c0 and W even): int32 [BN, HP * BD // 2],
    two elements a register, loaded through the pointer as int32 (a 16-bit tile loaded as such is held one element
    a register: the compiler unpacks the loaded vectors and keeps the halves apart). Otherwise as loaded,
    [BN, HP * BD]."""
    if PACKED:                                            # the rows of pairs: C, D, BD, c0 and W halved, in int32s
        off, m = _rows(b, n0, N, C // 2, D // 2, H, HP, BD // 2, BN, c0 // 2, W // 2)
        return tl.load(ptr.to(tl.pointer_type(tl.int32)) + off, mask=m, other=0)
    else:
        off, m = _rows(b, n0, N, C, D, H, HP, BD, BN, c0, W)
        return tl.load(ptr + off, mask=m, other=0.0)


@triton.jit
def _widen(v, ptr, salt, BN: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, PACKED: tl.constexpr):
    """A held slice (_hold) as fp32 [BN, HP, BD]. `salt` is an int32 0 the compiler cannot see through (read back
    from memory, e.g. a wait's result): each use widens the slice again with its own salt, so what stays live is
    the packed slice, never an fp32 copy kept from an earlier use, and no use is hoisted above the wait its salt
    comes from."""
    if PACKED:                           # the salt enters the shifts and the mask (fp16: one shift a pair more)
        if ptr.dtype.element_ty == tl.bfloat16:                             # bf16 is the top half of an fp32
            lo = (v << (16 + salt)).to(tl.float32, bitcast=True)
            hi = (v & (-65536 | salt)).to(tl.float32, bitcast=True)
        else:   # the salt in a shift: (v & (65535 | salt)) cut to 16 bits is v's low half whatever the salt, so
                # the compiler had kept one widening for every use (168 registers a thread forward, not 96)
            lo = (v << salt).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (v >> (16 + salt)).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return tl.reshape(tl.join(lo, hi), (BN, HP, BD))
    else:
        return tl.reshape(v, (BN, HP, BD)).to(tl.float32)


@triton.jit
def _pack(lo, hi, dtype: tl.constexpr):
    """fp32 pairs -> int32 holding them rounded to dtype (bf16 / fp16), lo in the low half. (A cvt.rn.bf16x2
    instruction would take one instruction a pair instead of five, but needs sm_80 for fp16 too, and compiled to
    more spills at the default register caps.)"""
    return (lo.to(dtype).to(tl.int16, bitcast=True).to(tl.int32) & 65535) | \
        (hi.to(dtype).to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _put(ptr, x, b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
         BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    """Stores x [BN, HP, BD] (fp32) as channels [c0, c0 + W) of tokens [n0, n0 + BN) of batch element b in ptr's
    dtype; PACKED as int32 pairs, the mirror of _hold."""
    if PACKED:
        lo, hi = tl.split(tl.reshape(x, (BN, HP * BD // 2, 2)))
        off, m = _rows(b, n0, N, C // 2, D // 2, H, HP, BD // 2, BN, c0 // 2, W // 2)
        tl.store(ptr.to(tl.pointer_type(tl.int32)) + off, _pack(lo, hi, ptr.dtype.element_ty), mask=m)
    else:
        off, m = _rows(b, n0, N, C, D, H, HP, BD, BN, c0, W)
        tl.store(ptr + off, tl.reshape(x, (BN, HP * BD)).to(ptr.dtype.element_ty), mask=m)


# A part is channels [c0, c0 + W) of every head, padded to BD: the kernels hold NP parts of D / NP channels each
# (see parts()); the helpers below are one part's share of each step.

@triton.jit
def _f_sumsq(xh, w, zero, S, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
             BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    so, sm, _, _ = _stat(b, H, D, HP, BD, c0, W)
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)
    tl.atomic_add(S + so, tl.sum(x * x, 0), mask=sm, sem="relaxed")   # ordered by the arrival's release


@triton.jit
def _f_energy(xh, w, zero, S, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
              BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    """The part's share of each token's per-head energy sum_d w^2 / S, [BN, HP]."""
    so, sm, _, _ = _stat(b, H, D, HP, BD, c0, W)
    invS = 1.0 / tl.maximum(tl.load(S + so, mask=sm, other=1.0, cache_modifier=".cg"), NORM_EPS_SQ)
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)
    return tl.sum(x * x * invS[None, :, :], 2)


@triton.jit
def _f_weighted(xh, w, zero, p, A, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
                BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    so, sm, _, _ = _stat(b, H, D, HP, BD, c0, W)
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)        # again after the softmax, not kept in fp32 across it
    tl.atomic_add(A + so, tl.sum(p[:, :, None] * x * x, 0), mask=sm, sem="relaxed")


@triton.jit
def _f_out(xh, w, zero, p, A, Pv, y, b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
           BD: tl.constexpr, BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    so, sm, _, _ = _stat(b, H, D, HP, BD, c0, W)
    inv = 1.0 / (1.0 + tl.load(A + so, mask=sm, other=0.0, cache_modifier=".cg") / (Pv + PI_EPS)[:, None])
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)             # n0 + zero: offsets rebuilt, not kept across the waits
    _put(y, -x * p[:, :, None] * inv[None, :, :], b, n0 + zero, N, C, D, H, HP, BD, BN, PACKED, c0, W)


@triton.jit
def _fwd_resident(w, temp, S, A, P, pi, y, sync, N, NS, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                  HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, PACKED: tl.constexpr, NP: tl.constexpr):
    GW: tl.constexpr = D // NP                                                # channels a part
    b, n0, arrived, zero = _ticket(sync, NS, BN)
    _, _, ho, hm = _stat(b, H, D, HP, BD)
    hc = tl.arange(0, HP)
    n = n0 + tl.arange(0, BN)
    nh = (n[:, None] < N) & (hc[None, :] < H)
    tok = (b * N + n[:, None]) * H + hc[None, :]                              # offsets of [BN, HP] per-token rows
    xh = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, 0, GW)               # the slice, held to its last use
    _f_sumsq(xh, w, zero, S, b, H, D, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:                                                               # parts 1 and 2
        xh1 = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, GW, GW)
        _f_sumsq(xh1, w, zero, S, b, H, D, HP, BD, BN, PACKED, GW, GW)
        xh2 = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, 2 * GW, GW)
        _f_sumsq(xh2, w, zero, S, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
    zero = _arrive_and_wait(arrived, NS)

    e = _f_energy(xh, w, zero, S, b, H, D, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:
        e += _f_energy(xh1, w, zero, S, b, H, D, HP, BD, BN, PACKED, GW, GW)
        e += _f_energy(xh2, w, zero, S, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
    p = _softmax_heads(e, tl.load(temp + hc, mask=hc < H, other=0.0), H, HP)
    p = tl.where(n[:, None] < N, p, 0.0)
    tl.store(pi + tok, p, mask=nh)
    _f_weighted(xh, w, zero * 2, p, A, b, H, D, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:
        _f_weighted(xh1, w, zero * 2, p, A, b, H, D, HP, BD, BN, PACKED, GW, GW)
        _f_weighted(xh2, w, zero * 2, p, A, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
    tl.atomic_add(P + ho, tl.sum(p, 0), mask=hm, sem="relaxed")
    zero = _arrive_and_wait(arrived + 1, NS)

    Pv = tl.load(P + ho, mask=hm, other=0.0, cache_modifier=".cg")
    _f_out(xh, w, zero, p, A, Pv, y, b, n0, N, C, D, H, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:
        _f_out(xh1, w, zero, p, A, Pv, y, b, n0, N, C, D, H, HP, BD, BN, PACKED, GW, GW)
        _f_out(xh2, w, zero, p, A, Pv, y, b, n0, N, C, D, H, HP, BD, BN, PACKED, 2 * GW, GW)


@triton.jit
def _bwd_stats(S, A, P, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, c0: tl.constexpr,
               W: tl.constexpr):
    """A part's offsets and mask of the forward's statistics, and the statistics as the backward uses them: S, 1/S,
    1/(P + eps), A, 1/(1 + dots). Loaded again in each stage rather than kept in registers across the waits (they
    are in L1 / L2)."""
    so, sm, ho, hm = _stat(b, H, D, HP, BD, c0, W)
    Sv = tl.load(S + so, mask=sm, other=1.0)
    invPe = 1.0 / (tl.load(P + ho, mask=hm, other=0.0) + PI_EPS)
    Av = tl.load(A + so, mask=sm, other=0.0)
    return so, sm, Sv, 1.0 / tl.maximum(Sv, NORM_EPS_SQ), invPe, Av, 1.0 / (1.0 + Av * invPe[:, None])


@triton.jit
def _b_energy(xh, w, zero, S, A, P, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
              BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    _, _, _, invS, _, _, _ = _bwd_stats(S, A, P, b, H, D, HP, BD, c0, W)
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)
    return tl.sum(x * x * invS[None, :, :], 2)


@triton.jit
def _b_dots(xh, gh, w, gy, zero, pi, S, A, P, G, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr,
            BD: tl.constexpr, BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    """G += sum_n dy w Pi / (1 + dots)^2; returns the part's share of r = sum_d dy w / (1 + dots), [BN, HP]. Each
    reduction widens the slices itself: one fp32 product kept for both would hold the whole tile in fp32 registers
    from the first reduction to the second."""
    so, sm, _, _, _, _, inv = _bwd_stats(S, A, P, b, H, D, HP, BD, c0, W)
    gx = _widen(gh, gy, zero * 2, BN, HP, BD, PACKED) * _widen(xh, w, zero * 2, BN, HP, BD, PACKED)
    tl.atomic_add(G + so, tl.sum(gx * pi[:, :, None], 0) * inv * inv, mask=sm, sem="relaxed")
    gx = _widen(gh, gy, zero * 4, BN, HP, BD, PACKED) * _widen(xh, w, zero * 4, BN, HP, BD, PACKED)
    return tl.sum(gx * inv[None, :, :], 2)


@triton.jit
def _b_pi_terms(xh, w, zero, S, A, P, G, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
                BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    """The part's shares of d loss / d Pi's per-channel sum, sum_d G w^2 / (P + eps) [BN, HP], of the energy
    [BN, HP], and of d loss / d P's sum_d G A [HP]."""
    so, sm, _, invS, invPe, Av, _ = _bwd_stats(S, A, P, b, H, D, HP, BD, c0, W)
    Gv = tl.load(G + so, mask=sm, other=0.0, cache_modifier=".cg")
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)
    q = tl.sum((Gv * invPe[:, None])[None, :, :] * x * x, 2)
    x = _widen(xh, w, zero * 4, BN, HP, BD, PACKED)   # the two reductions widen it each
    return q, tl.sum(x * x * invS[None, :, :], 2), tl.sum(Gv * Av, 1)


@triton.jit
def _b_dS(xh, w, zero, ge, S, A, P, dS, b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BN: tl.constexpr, PACKED: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    so, sm, _, invS, _, _, _ = _bwd_stats(S, A, P, b, H, D, HP, BD, c0, W)
    x = _widen(xh, w, zero, BN, HP, BD, PACKED)       # again after the softmax's backward, not kept across it
    tl.atomic_add(dS + so, -tl.sum(ge[:, :, None] * x * x, 0) * invS * invS, mask=sm, sem="relaxed")


@triton.jit
def _b_dw(xh, gh, w, gy, dw, zero, pi, ge, S, A, P, G, dS, b, n0, N, C: tl.constexpr, D: tl.constexpr,
          H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, PACKED: tl.constexpr,
          KEEP_DY: tl.constexpr, c0: tl.constexpr, W: tl.constexpr):
    so, sm, Sv, invS, invPe, _, inv = _bwd_stats(S, A, P, b, H, D, HP, BD, c0, W)
    Gs = tl.load(G + so, mask=sm, other=0.0, cache_modifier=".cg") * invPe[:, None]
    dSv = tl.where(Sv > NORM_EPS_SQ, tl.load(dS + so, mask=sm, other=0.0, cache_modifier=".cg"), 0.0)
    grad = _grad_w_x(_widen(xh, w, zero, BN, HP, BD, PACKED), pi, 2.0 * Gs, ge, 2.0 * invS, 2.0 * dSv)   # a tile
    if KEEP_DY:
        grad -= _grad_w_dy(_widen(gh, gy, zero, BN, HP, BD, PACKED), pi, inv)
    else:                                                                     # read again: half the registers held
        g = _widen(_hold(gy, b, n0 + zero, N, C, D, H, HP, BD, BN, PACKED, c0, W), gy, zero, BN, HP, BD, PACKED)
        grad -= _grad_w_dy(g, pi, inv)
    _put(dw, grad, b, n0 + zero, N, C, D, H, HP, BD, BN, PACKED, c0, W)   # offsets rebuilt


@triton.jit
def _bwd_resident(w, gy, pi_in, temp, S, A, P, G, dS, gtemp, dw, sync, N, NS, C: tl.constexpr, D: tl.constexpr,
                  H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, PI_STORED: tl.constexpr,
                  KEEP_DY: tl.constexpr, PACKED: tl.constexpr, NP: tl.constexpr):
    GW: tl.constexpr = D // NP                                                # channels a part
    b, n0, arrived, zero = _ticket(sync, NS, BN)
    hc = tl.arange(0, HP)
    n = n0 + tl.arange(0, BN)
    nh = (n[:, None] < N) & (hc[None, :] < H)
    xh = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, 0, GW)               # w and dy slices, held
    gh = _hold(gy, b, n0, N, C, D, H, HP, BD, BN, PACKED, 0, GW)              # (not KEEP_DY: to stage 1 only)
    if NP == 3:                                                               # parts 1 and 2
        xh1 = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, GW, GW)
        gh1 = _hold(gy, b, n0, N, C, D, H, HP, BD, BN, PACKED, GW, GW)
        xh2 = _hold(w, b, n0, N, C, D, H, HP, BD, BN, PACKED, 2 * GW, GW)
        gh2 = _hold(gy, b, n0, N, C, D, H, HP, BD, BN, PACKED, 2 * GW, GW)
    if PI_STORED:
        pi = tl.load(pi_in + (b * N + n[:, None]) * H + hc[None, :], mask=nh, other=0.0)
    else:
        e = _b_energy(xh, w, zero, S, A, P, b, H, D, HP, BD, BN, PACKED, 0, GW)
        if NP == 3:
            e += _b_energy(xh1, w, zero, S, A, P, b, H, D, HP, BD, BN, PACKED, GW, GW)
            e += _b_energy(xh2, w, zero, S, A, P, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
        pi = _softmax_heads(e, tl.load(temp + hc, mask=hc < H, other=0.0), H, HP)
        pi = tl.where(n[:, None] < N, pi, 0.0)
    r = _b_dots(xh, gh, w, gy, zero, pi, S, A, P, G, b, H, D, HP, BD, BN, PACKED, 0, GW)    # [BN, HP], kept
    if NP == 3:
        r += _b_dots(xh1, gh1, w, gy, zero, pi, S, A, P, G, b, H, D, HP, BD, BN, PACKED, GW, GW)
        r += _b_dots(xh2, gh2, w, gy, zero, pi, S, A, P, G, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
    zero = _arrive_and_wait(arrived, NS)

    q, e, gA = _b_pi_terms(xh, w, zero, S, A, P, G, b, H, D, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:
        q1, e1, gA1 = _b_pi_terms(xh1, w, zero, S, A, P, G, b, H, D, HP, BD, BN, PACKED, GW, GW)
        q2, e2, gA2 = _b_pi_terms(xh2, w, zero, S, A, P, G, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
        q, e, gA = q + q1 + q2, e + e1 + e2, gA + gA1 + gA2
    invPe = 1.0 / (tl.load(P + b * H + hc, mask=hc < H, other=0.0) + PI_EPS)
    gz, ge = _d_softmax_heads(q - r - (gA * invPe * invPe)[None, :], pi, tl.load(temp + hc, mask=hc < H, other=0.0),
                              nh)                                             # d Pi = q - r + d loss / d P
    tl.atomic_add(gtemp + hc, tl.sum(gz * e, 0), mask=hc < H, sem="relaxed")
    _b_dS(xh, w, zero * 2, ge, S, A, P, dS, b, H, D, HP, BD, BN, PACKED, 0, GW)
    if NP == 3:
        _b_dS(xh1, w, zero * 2, ge, S, A, P, dS, b, H, D, HP, BD, BN, PACKED, GW, GW)
        _b_dS(xh2, w, zero * 2, ge, S, A, P, dS, b, H, D, HP, BD, BN, PACKED, 2 * GW, GW)
    zero = _arrive_and_wait(arrived + 1, NS)

    _b_dw(xh, gh, w, gy, dw, zero, pi, ge, S, A, P, G, dS, b, n0, N, C, D, H, HP, BD, BN, PACKED, KEEP_DY, 0, GW)
    if NP == 3:
        _b_dw(xh1, gh1, w, gy, dw, zero, pi, ge, S, A, P, G, dS, b, n0, N, C, D, H, HP, BD, BN, PACKED, KEEP_DY,
              GW, GW)
        _b_dw(xh2, gh2, w, gy, dw, zero, pi, ge, S, A, P, G, dS, b, n0, N, C, D, H, HP, BD, BN, PACKED, KEEP_DY,
              2 * GW, GW)


def parts(D: int) -> tuple[int, int]:
    """How a program holds a head's D channels: (NP, BD), NP parts of D / NP channels each, padded to BD. A head of
    three times a power of two (48 = 3 x 16, 96, 24, 12) is held as three parts that pad nothing, where padding it
    to the next power of two (64) would leave a quarter of the registers and lanes on zeros; any other head as one
    part. (Three equal parts, not 32 + 16: parts of one shape take one layout, so the per-token values that join
    them need no move through shared memory; with 32 + 16 the compiler moved whole tiles between the two.)"""
    if D % 3 == 0 and D // 3 >= 4 and (D // 3) & (D // 3 - 1) == 0:
        return 3, D // 3
    return 1, max(2, next_pow2(D))


def packed(D: int, *tensors: torch.Tensor) -> bool:
    """Whether the resident kernels hold these tensors' slices as int32 pairs: 16-bit, D even (so are both parts'
    widths), and 4-byte aligned (a contiguous view may start at an odd element)."""
    return D % 2 == 0 and all(t.element_size() == 2 and t.data_ptr() % 4 == 0 for t in tensors)


def slices(N: int, tile: int, row: int) -> tuple[int, int] | None:
    """(tokens per slice BN, slices per batch element NS) for the resident kernels on sequences of N tokens whose
    held rows take `row` elements (padded heads, all parts): BN the largest power of two whose rows fit in `tile`
    elements (the same registers whatever the width); None under the interpreter where a sequence needs more than
    one slice (it runs one program at a time, so a program would wait for ever for the next)."""
    tokens = 1 << (max(1, tile // row).bit_length() - 1)
    if interpreting():
        BN = max(16, next_pow2(N))
        return (BN, 1) if BN <= INTERPRET_TOKENS else None
    return tokens, cdiv(N, tokens)


def capacity(kernel, warps: int, device) -> int:
    """Programs of a compiled kernel that the GPU holds at once, from its registers and shared memory (the
    occupancy rule: registers are given to warps in blocks of 256, each of an SM's 4 schedulers has a quarter of the
    register file). At least one per SM: any program that compiled fits on an SM."""
    props = torch.cuda.get_device_properties(device)
    try:
        kernel._init_handles()                     # loads the binary, which gives its register count
        per_sm = programs_per_sm(kernel.n_regs, warps, kernel.metadata.shared,
                                 getattr(props, "regs_per_multiprocessor", 65536),
                                 getattr(props, "max_threads_per_multi_processor", 1536),
                                 getattr(props, "shared_memory_per_multiprocessor", 100 * 1024))
    except Exception:                              # a Triton without these fields: count one program per SM
        per_sm = 1
    return props.multi_processor_count * per_sm


def programs_per_sm(regs: int, warps: int, shared: int, sm_regs: int = 65536, sm_threads: int = 1536,
                    sm_shared: int = 100 * 1024, max_programs: int = 16) -> int:
    """Programs of `warps` warps, `regs` registers a thread and `shared` bytes of shared memory that one SM holds
    (CUDA's occupancy rule: a warp's registers are given in blocks of 256 from one of the SM's 4 schedulers, each
    with a quarter of the register file; 1 KB of shared memory is reserved per program). At least 1. The defaults
    are the smallest of sm_80 to sm_120 (sm_86 / sm_87: 1536 threads, 16 programs)."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = 4 * ((sm_regs // 4) // per_warp) // warps
    by_shared = sm_shared // (shared + 1024)
    return max(1, min(by_regs, sm_threads // (32 * warps), by_shared, max_programs))


_FITS: dict = {}


def _launch(kernel, B: int, NS: int, args, warps: int, maxnreg: int, device, spill: int = 16,
            whole: bool = False) -> bool:
    """Launch B * NS programs of a resident kernel if the GPU can hold a batch element's NS at once, or with `whole`
    all B * NS (one wave; the count is decided once per kernel specialisation and NS: the compiled kernel's
    registers give it). maxnreg > 0 caps the registers a thread may use, where the capped kernel spills at most
    `spill` bytes a thread; where it spills more (the caps were chosen for one shape, and a wider head holds more per
    thread) the compiler's choice runs."""
    grid = (B * NS,)
    options = launch_options(warps, maxnreg)
    if not interpreting():
        key = (kernel, warps, maxnreg, spill, device, args[0].dtype, *[a for a in args if not torch.is_tensor(a)])
        if key not in _FITS:
            compiled = kernel.warmup(*args, grid=grid, **options)
            if maxnreg > 0 and compiled is not None and spilled(compiled) > spill:
                options = launch_options(warps)
                compiled = kernel.warmup(*args, grid=grid, **options)
            held = capacity(compiled, warps, device) if compiled is not None else \
                torch.cuda.get_device_properties(device).multi_processor_count
            _FITS[key] = (held, options)
        held, options = _FITS[key]
        if (B * NS if whole else NS) > held:
            return False
    kernel[grid](*args, **options)
    return True


def _setting(tile: int, maxnreg: int, w: torch.Tensor, D: int, *others: torch.Tensor) -> tuple[int, int]:
    """(elements a program holds, register cap) for slices of w's dtype. The settings are given for 16-bit slices
    held as pairs: fp32 slices hold half the elements in the same registers, and the cap applies to pairs only (at
    the forward's cap of 96 fp32 slices spilled 648 bytes a thread); fp32 and unpacked slices run at the
    compiler's choice, which spills nothing."""
    return tile * 2 // w.element_size(), maxnreg if packed(D, w, *others) else 0


def forward(w, temp, S, A, P, pi, y, sync, N, C, D, H, HP, tile, warps, maxnreg=0, spill=16, whole=False) -> bool:
    """All three forward passes in one launch of NS programs per batch element; False (nothing run) where the
    sequences need more programs than the GPU holds at once (with `whole`: where the whole batch's do), or the
    interpreter more than one."""
    NP, BD = parts(D)
    tile, maxnreg = _setting(tile, maxnreg, w, D)
    fit = slices(N, tile, HP * BD * NP)
    return bool(fit) and _launch(_fwd_resident, w.shape[0], fit[1], (w, temp, S, A, P, pi, y, sync, N, fit[1], C, D,
                                                                     H, HP, BD, fit[0], packed(D, w), NP), warps,
                                 maxnreg, w.device, spill, whole)


def backward(w, gy, pi, temp, S, A, P, G, dS, gtemp, dw, sync, N, C, D, H, HP, pi_stored, keep_dy, tile, warps,
             maxnreg=0, spill=16) -> bool:
    """All three backward stages in one launch; False (nothing run) as for forward()."""
    NP, BD = parts(D)
    tile, maxnreg = _setting(tile, maxnreg, w, D, gy)
    fit = slices(N, tile, HP * BD * NP)
    return bool(fit) and _launch(_bwd_resident, w.shape[0], fit[1], (w, gy, pi, temp, S, A, P, G, dS, gtemp, dw,
                                                                     sync, N, fit[1], C, D, H, HP, BD, fit[0],
                                                                     pi_stored, keep_dy, packed(D, w, gy), NP), warps,
                                 maxnreg, w.device, spill)
