"""Causal TSSA with its chunks and heads in parallel (causal_tssa.CHUNKED): one-warp programs, no barrier.

The kernels of causal_tssa.py give a program a slice of one sequence with every head (padded to a power of two:
H12 as 16), because the softmax over heads needs all heads of a token; their sums over heads cross warps, a few
barriers a tile or step. Here a program holds a group of G heads (the largest of 4, 2, 1 dividing H: none padded) of
one chunk of CHUNKED_TOKENS tokens, and walks it in tiles of BT tokens. At G = 4 and 64 channels a head, one warp's
lanes take a token row's 256 bf16 channels 16 bytes each, so every token of a tile stays in its thread: running sums
inside a tile are in-thread cumulative sums, reductions over a head's channels are shuffles inside the warp, and
nothing waits at a barrier. What the chunks before a chunk carry in (after it, in the backward pass) comes from a
decoupled look-back along the (sequence, group), as in the fused kernels, so each program first walks its chunk for
its own totals, then again with the sums carried in. The softmax over heads sits between two launches, so each
direction is two kernels:

Forward (w: [B, T, C], C = H * D):
  1. _f_energy: S_t = S + cumsum(w^2), e_t = sum_d w^2 / max(S_t, 1e-12) + D * denom_bias[h, pos]  -> E [B, T, H]
  2. _f_output: Pi = softmax_h(temp_h E) (stored), A_t = A + cumsum(Pi w^2), P_t = P + cumsum(Pi),
     y = -w Pi / (1 + A_t / (P_t + 1e-8))
Backward (the forward's Pi and the sums at each chunk's start, S_start / AP_start, as the walks keep them):
  1. _b_pi: what flows into A_t and P_t from token t on gives d Pi (the terms in what flows in after the chunk
     added by a second walk over w alone, d Pi being linear in them)                                -> [B, T, H]
  2. _b_dw: the softmax's backward over all heads of a token gives d e; what flows into S_t from t on, and dw.
What flows in from later tokens is carried from a chunk's start less what the walk passed (d S in fp64, or in fp32
pairs where the GPU's fp64 is slow, as the walks do: it is huge at a sequence's first tokens), plus a reverse sum
inside the tile taken directly, under a triangular mask.

w is read twice in each kernel (a chunk's second walk mostly from cache), dy once in each backward kernel.
B * H / G * T / CHUNKED_TOKENS programs a launch: 1,536 at B8 T4096 H12 with chunks of 64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_tssa import _lookback, _stat, _ticket
from .causal_tssa_tiles import _before, _csum, _csum_masked, _tile_rows, _tile_store
from .fastmath import _rcp, _suffix_add, _suffix_split, _suffix_term, _suffix_value, _two_sum
from .utils import alloc, launch_options


@triton.jit
def _tile(ptr, b, t, T, hi, grp, C: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    """Heads of group grp, tokens t of sequence b: [BT, G, BD] fp32, zeros from token hi and past D (loaded as flat
    rows, each thread holding its channels of every token it has: see causal_tssa_tiles)."""
    return _tile_rows(ptr + grp * G * D, b, t, t < hi, T, C, D, G, G, BD)


@triton.jit
def _store(ptr, v, b, t, T, hi, grp, C: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    _tile_store(ptr + grp * G * D, v, b, t, t < hi, T, C, D, G, G, BD)


@triton.jit
def _group(ptr, b, t, T, hi, grp, H: tl.constexpr, G: tl.constexpr):
    """Per-head values of the group's heads [BT, G, 1] from a [B, T, H] buffer, zeros from token hi."""
    g = tl.arange(0, G)[None, :]
    return tl.load(ptr + (b * T + t)[:, None] * H + grp * G + g, mask=(t < hi)[:, None] & (g < G),
                   other=0.0)[:, :, None]


@triton.jit
def _store_group(ptr, v, b, t, T, hi, grp, H: tl.constexpr, G: tl.constexpr):
    g = tl.arange(0, G)[None, :]
    tl.store(ptr + (b * T + t)[:, None] * H + grp * G + g, tl.sum(v, 2), mask=(t < hi)[:, None] & (g < G))


@triton.jit
def _chain(sync, part, c, s, NS, mat, vec, init_mat, init_vec, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr,
           HAS_VEC: tl.constexpr, REVERSE: tl.constexpr, PREFIX: tl.constexpr):
    """_lookback along chain c (a sequence's group of heads): init + the totals (mat [G, BD], vec [G]) of the chunks
    before chunk s (after it when REVERSE), as [1, G, BD] and [1, G, 1]."""
    so, sm = _stat(G, D, G, BD)
    m, v = _lookback(sync + 1, part, c, s, NS, mat, vec, init_mat, init_vec, so, sm, tl.arange(0, G), G, G * D,
                     HAS_VEC, REVERSE, PREFIX)
    return m[None, :, :], v[None, :, None]


@triton.jit
def _state(ptr, c, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    """The group's rows [G, BD] of a [B, H, D] state (chain c = b * H / G + group)."""
    so, sm = _stat(G, D, G, BD)
    return tl.load(ptr + c * G * D + so, mask=sm, other=0.0)


@triton.jit
def _put_state(ptr, v, c, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    so, sm = _stat(G, D, G, BD)
    tl.store(ptr + c * G * D + so, tl.reshape(v, (G, BD)), mask=sm)


@triton.jit
def _row_at(ptr, k, grp, W: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    """The group's channels of row k of a [.., W] buffer of per-chunk sums: pointer offsets [G, BD] and mask."""
    so, sm = _stat(G, D, G, BD)
    return ptr + k * W + grp * G * D + so, sm


@triton.jit
def _vec(x):
    """[G, 1] -> [G]."""
    return tl.sum(x, 1)


@triton.jit
def _csum_heads(v, REVERSE: tl.constexpr = False, STRICT: tl.constexpr = False):
    """Cumulative sum of per-head values [BT, G] under a triangular mask (see _csum_masked; small, nothing moved)."""
    take = _before(tl.arange(0, v.shape[0]), REVERSE, STRICT)
    return tl.sum(tl.where(take[:, :, None], v[None, :, :], 0.0), 1)


@triton.jit
def _tile_a(x, p, A, P):
    """From A [1, G, BD], P [1, G, 1] before the tile: Pi w^2, A_t [BT, G, BD], 1 / (P_t + eps) [BT, G, 1] and
    1 / (1 + A_t / (P_t + eps)) after each token."""
    pq = p * (x * x)
    Ac = A + tl.cumsum(pq, 0)
    rpe = _rcp(P + tl.cumsum(tl.sum(p, 2), 0)[:, :, None] + 1e-8)
    return pq, Ac, rpe, _rcp(1.0 + Ac * rpe)


@triton.jit
def _tile_pi(E, temp, b, t, T, hi, grp, H: tl.constexpr, HP: tl.constexpr, G: tl.constexpr):
    """Pi of the group's heads [BT, G, 1] from the energies of all heads of tokens t (0 from token hi)."""
    hc = tl.arange(0, HP)
    z = tl.load(E + (b * T + t)[:, None] * H + hc[None, :], mask=(t < hi)[:, None] & (hc < H)[None, :], other=0.0)
    z = tl.where((hc < H)[None, :], z * tl.load(temp + hc, mask=hc < H, other=0.0)[None, :], float("-inf"))
    zmax = tl.max(z, 1)
    rsum = _rcp(tl.sum(tl.exp(z - zmax[:, None]), 1))
    tg = tl.load(temp + grp * G + tl.arange(0, G))[None, :, None]
    p = tl.exp(_group(E, b, t, T, hi, grp, H, G) * tg - zmax[:, None, None]) * rsum[:, None, None]
    return tl.where((t < hi)[:, None, None], p, 0.0)


@triton.jit
def _tile_ge(pi, gpi, temp, b, t, T, hi, grp, H: tl.constexpr, HP: tl.constexpr, G: tl.constexpr):
    """Pi, d loss / d (temp_h e_t) and d e_t of the group's heads [BT, G, 1]: the softmax's backward over all heads."""
    hc = tl.arange(0, HP)
    heads = (b * T + t)[:, None] * H + hc[None, :]
    hm = (t < hi)[:, None] & (hc < H)[None, :]
    mix = tl.sum(tl.load(pi + heads, mask=hm, other=0.0) * tl.load(gpi + heads, mask=hm, other=0.0), 1)
    p = _group(pi, b, t, T, hi, grp, H, G)
    gz = p * (_group(gpi, b, t, T, hi, grp, H, G) - mix[:, None, None])
    return p, gz, gz * tl.load(temp + grp * G + tl.arange(0, G))[None, :, None]


@triton.jit
def _tile_s(x, S):
    """w^2, S_t [BT, G, BD] and 1 / max(S_t, eps) after each token of the tile, from S [1, G, BD] before it."""
    q = x * x
    Sc = S + tl.cumsum(q, 0)
    return q, Sc, _rcp(tl.maximum(Sc, 1e-12))


@triton.jit
def _tile_ds(ge, q, Sc, rden, PAIR: tl.constexpr):
    """The direct d loss / d S_t [BT, G, BD] and the tile's total of it, error-free: fp64, or an fp32 pair (value,
    error) where PAIR (both passes over a chunk must take off exactly what the other added)."""
    dS = tl.where(Sc > 1e-12, _suffix_term(-ge * q * rden, rden, PAIR), 0.0)
    if PAIR:
        tot, err = tl.reduce((dS, tl.zeros_like(dS)), 0, _two_sum, keep_dims=True)
    else:
        tot, err = tl.sum(dS.to(tl.float64), 0, keep_dims=True), 0.0
    return dS, tot, err


@triton.jit
def _f_energy(w, bias, pos, S0, E, S_start, S_T, sync, part, T, tmax, per, NS, C: tl.constexpr, D: tl.constexpr,
              H: tl.constexpr, G: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr,
              PREFIX: tl.constexpr, STAGES: tl.constexpr):
    c, s, k, lo, hi, chains = _ticket(sync, NS, per, T, False)
    b, grp = c // (H // G), c % (H // G)
    own = tl.zeros([1, G, BD], dtype=tl.float32)
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        x = _tile(w, b, t0 + tl.arange(0, BT), T, hi, grp, C, D, G, BD)
        own += tl.sum(x * x, 0, keep_dims=True)
    own = tl.sum(own, 0)
    S = _chain(sync, part, c, s, NS, own, tl.zeros([G], dtype=tl.float32), _state(S0, c, D, G, BD),
               tl.zeros([G], dtype=tl.float32), D, G, BD, False, False, PREFIX)[0]
    at, m = _row_at(S_start, b * NS + s, grp, H * D, D, G, BD)
    tl.store(at, tl.reshape(S, (G, BD)), mask=m)
    if s == NS - 1:
        _put_state(S_T, S + own[None, :, :], c, D, G, BD)
    p0 = tl.load(pos + b)
    g = tl.arange(0, G)[None, :]
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        q, Sc, rden = _tile_s(_tile(w, b, t, T, hi, grp, C, D, G, BD), S)
        e = tl.sum(q * rden, 2, keep_dims=True)
        if BOUNDED:
            e += D * tl.load(bias + (grp * G + g) * tmax + p0 + t[:, None], mask=(t < hi)[:, None] & (g < G),
                             other=0.0)[:, :, None]
        _store_group(E, e, b, t, T, hi, grp, H, G)
        S += tl.sum(q, 0, keep_dims=True)


@triton.jit
def _f_output(w, temp, E, pi, A0, P0, y, AP_start, A_T, P_T, sync, part, T, per, NS, C: tl.constexpr,
              D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, G: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
              PREFIX: tl.constexpr, STAGES: tl.constexpr):
    c, s, k, lo, hi, chains = _ticket(sync, NS, per, T, False)
    b, grp = c // (H // G), c % (H // G)
    g = tl.arange(0, G)
    own_a = tl.zeros([1, G, BD], dtype=tl.float32)
    own_p = tl.zeros([1, G, 1], dtype=tl.float32)
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        p = _tile_pi(E, temp, b, t, T, hi, grp, H, HP, G)
        _store_group(pi, p, b, t, T, hi, grp, H, G)
        x = _tile(w, b, t, T, hi, grp, C, D, G, BD)
        own_a += tl.sum(p * (x * x), 0, keep_dims=True)
        own_p += tl.sum(p, 0, keep_dims=True)
    own_a, own_p = tl.sum(own_a, 0), _vec(tl.sum(own_p, 0))
    A, P = _chain(sync, part, c, s, NS, own_a, own_p, _state(A0, c, D, G, BD), tl.load(P0 + c * G + g), D, G, BD,
                  True, False, PREFIX)
    Ph = _vec(tl.reshape(P, (G, 1)))
    at, m = _row_at(AP_start, b * NS + s, grp, H * D + H, D, G, BD)
    tl.store(at, tl.reshape(A, (G, BD)), mask=m)
    tl.store(AP_start + (b * NS + s) * (H * D + H) + H * D + grp * G + g, Ph)
    if s == NS - 1:
        _put_state(A_T, A + own_a[None, :, :], c, D, G, BD)
        tl.store(P_T + c * G + g, Ph + own_p)
    tl.debug_barrier()                                    # the first walk's Pi, stored by other threads, read back
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        p = _group(pi, b, t, T, hi, grp, H, G)
        x = _tile(w, b, t, T, hi, grp, C, D, G, BD)
        pq, Ac, rpe, inv = _tile_a(x, p, A, P)
        _store(y, -x * p * inv, b, t, T, hi, grp, C, D, G, BD)
        A += tl.sum(pq, 0, keep_dims=True)
        P += tl.sum(p, 0, keep_dims=True)


@triton.jit
def _ap(AP_start, k, grp, H: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BD: tl.constexpr):
    """A [1, G, BD] and P [1, G, 1] of row k of a [.., H * D + H] buffer (AP_start, R_start)."""
    at, m = _row_at(AP_start, k, grp, H * D + H, D, G, BD)
    P = tl.load(AP_start + k * (H * D + H) + H * D + grp * G + tl.arange(0, G))
    return tl.load(at, mask=m, other=0.0)[None, :, :], P[None, :, None]


@triton.jit
def _tile_da(x, g, p, A, P):
    """Pi w^2, the direct d loss / d A_t [BT, G, BD] and d loss / d P_t [BT, G, 1], g x inv and g inv: with
    y = -x Pi inv, inv = 1 / (1 + A_t rpe), d y / d A_t = x Pi inv^2 rpe and d y / d P_t = -x Pi inv^2 A_t rpe^2."""
    pq, Ac, rpe, inv = _tile_a(x, p, A, P)
    gi = g * inv
    gxi = gi * x
    dA = gxi * inv * (p * rpe)
    dP = -tl.sum(gxi * inv * Ac, 2, keep_dims=True) * (p * rpe * rpe)
    return pq, dA, dP, gxi, gi


@triton.jit
def _b_pi(w, gy, pi, AP_start, gA_T, gP_T, gpi, R_start, gA0, gP0, sync, part, T, per, NS, C: tl.constexpr,
          D: tl.constexpr, H: tl.constexpr, G: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
          PREFIX: tl.constexpr, STAGES: tl.constexpr):
    # d Pi_t = sum_d (RA_t w^2 - g x inv) + RP_t, RA_t and RP_t flowing into A, P at token t from it and every later
    # token: RA_t = RA_start less what flows in at the chunk's tokens before t, RA_start being what flows in after
    # the chunk (look-back) plus the chunk's own totals. d Pi is linear in RA_start and RP_start, so the first walk
    # stores all of it but the terms in them, and the second adds those: it reads w alone, no softmax or dy.
    c, s, k, lo, hi, chains = _ticket(sync, NS, per, T, True)
    b, grp = c // (H // G), c % (H // G)
    g = tl.arange(0, G)
    A, P = _ap(AP_start, b * NS + s, grp, H, D, G, BD)
    own_a = tl.zeros([1, G, BD], dtype=tl.float32)                          # flowing in at the tokens walked
    own_p = tl.zeros([1, G, 1], dtype=tl.float32)
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        x = _tile(w, b, t, T, hi, grp, C, D, G, BD)
        p = _group(pi, b, t, T, hi, grp, H, G)
        pq, dA, dP, gxi, gi = _tile_da(x, _tile(gy, b, t, T, hi, grp, C, D, G, BD), p, A, P)
        dPh = tl.sum(dP, 2)
        ea = own_a + _csum(dA, False, True)                                 # ... and at the tile's tokens before t
        ep = own_p + _csum_heads(dPh, False, True)[:, :, None]
        _store_group(gpi, -tl.sum(ea * (x * x) + gxi, 2, keep_dims=True) - ep, b, t, T, hi, grp, H, G)
        own_a += tl.sum(dA, 0, keep_dims=True)
        own_p += tl.sum(dPh, 0, keep_dims=True)[:, :, None]
        A += tl.sum(pq, 0, keep_dims=True)
        P += tl.sum(p, 0, keep_dims=True)
    RA, RP = _chain(sync, part, c, s, NS, tl.sum(own_a, 0), _vec(tl.sum(own_p, 0)), _state(gA_T, c, D, G, BD),
                    tl.load(gP_T + c * G + g), D, G, BD, True, True, PREFIX)
    RA += own_a
    RP += own_p
    RPh = _vec(tl.reshape(RP, (G, 1)))
    at, m = _row_at(R_start, b * NS + s, grp, H * D + H, D, G, BD)
    tl.store(at, tl.reshape(RA, (G, BD)), mask=m)
    tl.store(R_start + (b * NS + s) * (H * D + H) + H * D + grp * G + g, RPh)
    if s == 0:
        _put_state(gA0, RA, c, D, G, BD)
        tl.store(gP0 + c * G + g, RPh)
    tl.debug_barrier()                                    # the first walk's terms, stored by other threads, read back
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        x = _tile(w, b, t, T, hi, grp, C, D, G, BD)
        g_pi = _group(gpi, b, t, T, hi, grp, H, G) + tl.sum(RA * (x * x), 2, keep_dims=True) + RP
        _store_group(gpi, g_pi, b, t, T, hi, grp, H, G)


@triton.jit
def _b_dw(w, gy, pi, gpi, ge_io, S_start, AP_start, R_start, temp, bias, pos, gS_T, gtemp, gbias, dw, gS0, sync, part,
          T, tmax, per, NS, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, G: tl.constexpr,
          BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, PREFIX: tl.constexpr, PAIR: tl.constexpr,
          STAGES: tl.constexpr):
    # d e_t = temp_h Pi (d Pi - sum_h' Pi d Pi) over the token's heads; d loss / d S_t = -d e_t w^2 / S_t^2 where the
    # forward's max(S, eps) took S_t; dw = 2 x (Pi RA_t + d e_t / S_t + RS_t) - Pi g inv. RS is carried in fp64 or
    # an fp32 pair (PAIR): d S is huge at a sequence's first tokens, and RS_t is what flows in at the chunk's start
    # less what the walk passed.
    c, s, k, lo, hi, chains = _ticket(sync, NS, per, T, True)
    b, grp = c // (H // G), c % (H // G)
    g = tl.arange(0, G)
    at, m = _row_at(S_start, b * NS + s, grp, H * D, D, G, BD)
    S = tl.load(at, mask=m, other=0.0)[None, :, :]
    p0 = tl.load(pos + b)
    own, own_l = _suffix_split(tl.zeros([1, G, BD], dtype=tl.float64), PAIR)
    gt = tl.zeros([1, G, 1], dtype=tl.float32)
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        p, gz, ge = _tile_ge(pi, gpi, temp, b, t, T, hi, grp, H, HP, G)
        q, Sc, rden = _tile_s(_tile(w, b, t, T, hi, grp, C, D, G, BD), S)
        e = tl.sum(q * rden, 2, keep_dims=True)
        if BOUNDED:
            at_b = (grp * G + g[None, :]) * tmax + p0 + t[:, None]
            bm = (t < hi)[:, None] & (g < G)[None, :]
            e += D * tl.load(bias + at_b, mask=bm, other=0.0)[:, :, None]
            tl.atomic_add(gbias + at_b, D * tl.sum(ge, 2), mask=bm, sem="relaxed")
        gt += tl.sum(gz * e, 0, keep_dims=True)
        _store_group(ge_io, ge, b, t, T, hi, grp, H, G)
        dS, tot, err = _tile_ds(ge, q, Sc, rden, PAIR)
        own, own_l = _suffix_add(own, own_l, tot, PAIR)
        own_l += err
        S += tl.sum(q, 0, keep_dims=True)
    tl.atomic_add(gtemp + grp * G + g, _vec(tl.sum(gt, 0)), sem="relaxed")
    own64 = tl.sum(_suffix_value(own, own_l, PAIR, tl.float64), 0)
    RS = _chain(sync, part, c, s, NS, own64, tl.zeros([G], dtype=tl.float64),
                _state(gS_T, c, D, G, BD).to(tl.float64), tl.zeros([G], dtype=tl.float64), D, G, BD, False, True,
                PREFIX)[0]
    RS, RS_l = _suffix_split(RS + own64[None, :, :], PAIR)                  # flowing into S at the chunk's start
    if s == 0:
        _put_state(gS0, _suffix_value(RS, RS_l, PAIR, tl.float32), c, D, G, BD)
    S = tl.load(at, mask=m, other=0.0)[None, :, :]
    A, P = _ap(AP_start, b * NS + s, grp, H, D, G, BD)
    RA, RP = _ap(R_start, b * NS + s, grp, H, D, G, BD)
    tl.debug_barrier()                                    # the first walk's d e, stored by other threads, read back
    for t0 in tl.range(lo, hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        p = _group(pi, b, t, T, hi, grp, H, G)
        ge = _group(ge_io, b, t, T, hi, grp, H, G)
        x = _tile(w, b, t, T, hi, grp, C, D, G, BD)
        q, Sc, rden = _tile_s(x, S)
        dS, tot, err = _tile_ds(ge, q, Sc, rden, PAIR)
        RS, RS_l = _suffix_add(RS, RS_l, tot, PAIR, True)
        RS_l -= err
        RSc = _suffix_value(RS, RS_l, PAIR, tl.float32) + _csum(dS, True)
        pq, dA, dP, gxi, gi = _tile_da(x, _tile(gy, b, t, T, hi, grp, C, D, G, BD), p, A, P)
        RA -= tl.sum(dA, 0, keep_dims=True)
        RAc = RA + _csum_masked(dA, True)
        _store(dw, (x + x) * (p * RAc + (ge * rden + RSc)) - p * gi, b, t, T, hi, grp, C, D, G, BD)
        S += tl.sum(q, 0, keep_dims=True)
        A += tl.sum(pq, 0, keep_dims=True)
        P += tl.sum(p, 0, keep_dims=True)


def group_size(H: int) -> int:
    """Heads a program takes: the largest of 4, 2, 1 that divides H (no head padded; 4 bf16 heads of 64 channels
    fill a warp's lanes with 16 bytes each, so no lane lies on the token axis)."""
    return next(g for g in (4, 2, 1) if H % g == 0)


def _links(chains: int, NS: int, G: int, D: int, like: torch.Tensor, dtypes=(torch.float32, torch.float32)):
    """The look-back buffers of a direction's two launches: for each, sync (its ticket counter and a flag per chunk,
    zeroed; both launches' from one memset) and part (two rows of G * (D + 1) per chunk, in its dtype)."""
    n = 1 + chains * NS
    sync = torch.zeros(2 * n, device=like.device, dtype=torch.int32)
    return [(sync[i * n:(i + 1) * n], alloc(chains * NS * 2 * G * (D + 1), like=like, dtype=dt))
            for i, dt in enumerate(dtypes)]


def forward(w, temp, bias, pos, S0, A0, P0, H: int, bounded: bool, BD: int, HP: int, BT: int, per: int, NS: int,
            prefix: bool, warps: int, stages: int):
    """y [B, T, C], S_T, A_T, P_T, Pi [B, T, H], S_start [B, NS, H * D], AP_start [B, NS, H * D + H] (as
    causal_tssa._forward): chunks of per tokens, walked BT at a time."""
    B, T, C = w.shape
    D, G = C // H, group_size(H)
    opts = launch_options(warps)
    chains = B * H // G
    grid = (chains * NS,)
    S_start = alloc(B, NS, C, like=w, dtype=torch.float32)
    AP_start = alloc(B, NS, C + H, like=w, dtype=torch.float32)
    S_T, A_T, P_T = alloc(*S0.shape, like=S0), alloc(*A0.shape, like=A0), alloc(*P0.shape, like=P0)
    E, pi = alloc(B, T, H, like=w, dtype=torch.float32), alloc(B, T, H, like=w, dtype=torch.float32)
    y = alloc(B, T, C, like=w)
    energy, output = _links(chains, NS, G, D, w)
    _f_energy[grid](w, bias, pos, S0, E, S_start, S_T, *energy, T, bias.shape[1], per, NS, C, D,
                    H, G, BD, BT, bounded, prefix, stages, **opts)
    _f_output[grid](w, temp, E, pi, A0, P0, y, AP_start, A_T, P_T, *output, T, per, NS, C, D, H,
                    HP, G, BD, BT, prefix, stages, **opts)
    return y, S_T, A_T, P_T, pi, S_start, AP_start


def backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, gtemp, gbias, H: int, bounded: bool,
             BD: int, HP: int, BT: int, per: int, NS: int, prefix: bool, warps: int, pair: bool, stages: int):
    """dw, gS0, gA0, gP0 (as causal_tssa._backward); gtemp [H] and gbias [H, Tmax] are zeroed fp32 accumulators."""
    B, T, C = w.shape
    D, G = C // H, group_size(H)
    opts = launch_options(warps)
    chains = B * H // G
    grid = (chains * NS,)
    gS0, gA0 = alloc(B, H, D, like=w, dtype=torch.float32), alloc(B, H, D, like=w, dtype=torch.float32)
    gP0 = alloc(B, H, like=w, dtype=torch.float32)
    gpi = alloc(B, T, H, like=w, dtype=torch.float32)
    R_start = alloc(B, NS, C + H, like=w, dtype=torch.float32)
    dw = alloc(B, T, C, like=w)
    d_pi, d_w = _links(chains, NS, G, D, w, (torch.float32, torch.float64))   # d S passes between chunks in fp64
    _b_pi[grid](w, gy, pi, AP_start, gA_T, gP_T, gpi, R_start, gA0, gP0, *d_pi, T, per, NS, C,
                D, H, G, BD, BT, prefix, stages, **opts)
    _b_dw[grid](w, gy, pi, gpi, alloc(B, T, H, like=w, dtype=torch.float32), S_start, AP_start, R_start, temp, bias,
                pos, gS_T, gtemp, gbias, dw, gS0,
                *d_w, T, bias.shape[1], per, NS, C, D, H, HP, G, BD, BT, bounded,
                prefix, pair, stages, **opts)
    return dw, gS0, gA0, gP0
