"""Causal TSSA with its chunks and heads in parallel (causal_tssa.CHUNKED): no token walk.

The kernels of causal_tssa.py give a program a slice of one sequence with every head, walked a token (or a small
tile) at a time, because the softmax over heads needs all heads of a token: each token waits on the sums of the one
before. Here a program holds one head of one chunk of BT tokens, [BT, D], and takes its running sums with
cumulative sums over the chunk's tokens; what the chunks before it carry in (after it, in the backward pass) comes
from a decoupled look-back along the (sequence, head), as in the fused kernels. The softmax over heads sits between
two launches, so each direction is two kernels:

Forward (w: [B, T, C], C = H * D):
  1. _f_energy: S_t = S + cumsum(w^2), e_t = sum_d w^2 / max(S_t, 1e-12) + D * denom_bias[h, pos]  -> E [B, T, H]
  2. _f_output: Pi = softmax_h(temp_h E) (stored), A_t = A + cumsum(Pi w^2), P_t = P + cumsum(Pi),
     y = -w Pi / (1 + A_t / (P_t + 1e-8))
Backward (the forward's Pi and the sums at each chunk's start, S_start / AP_start, as the walked kernels keep):
  1. _b_pi: the reverse cumulative sums of the direct d A_t, d P_t give d Pi                        -> [B, T, H]
  2. _b_dw: the softmax's backward (all heads of a token) gives d e; the reverse cumulative sum of the direct d S_t,
     and dw.
The suffix sums the backward needs are summed directly (a reverse cumulative sum inside the chunk, the later chunks'
totals from the look-back), never as a total minus a prefix, so fp32 holds them where d S is huge at a sequence's
first tokens. B * H * T / BT programs a launch (6,144 at B8 T4096 H12 with chunks of 64), heads never padded; w is
read twice forward and w, dy twice backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_tssa import _lookback, _ticket
from .fastmath import _rcp
from .utils import alloc, launch_options


@triton.jit
def _tile(ptr, b, t, T, h, C: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """Head h of tokens t of sequence b: [BT, BD] fp32, zeros past T and D."""
    d = tl.arange(0, BD)
    m = (t < T)[:, None] & (d < D)[None, :]
    return tl.load(ptr + (b * T + t)[:, None] * C + h * D + d[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _head(ptr, b, h, t, T, H: tl.constexpr):
    """Per-token values of head h [BT] from a [B, T, H] buffer, zeros past T."""
    return tl.load(ptr + (b * T + t) * H + h, mask=t < T, other=0.0)


@triton.jit
def _chain(sync, part, c, s, NS, mat, val, init_mat, init_val, D: tl.constexpr, BD: tl.constexpr,
           HAS_VAL: tl.constexpr, REVERSE: tl.constexpr, PREFIX: tl.constexpr):
    """_lookback along chain c = b * H + h: init + the totals (mat [BD], val a scalar) of the chunks before chunk s
    (after it when REVERSE)."""
    d = tl.arange(0, BD)
    two = tl.arange(0, 2)                                # the scalar rides in a vector of 2, only its first entry set
    vec = tl.where(two == 0, val, 0.0)
    init_vec = tl.where(two == 0, init_val, 0.0)
    m, v = _lookback(sync + 1, part, c, s, NS, mat, vec, init_mat, init_vec, d, d < D, two, 1, D, HAS_VAL, REVERSE,
                     PREFIX)
    return m, tl.sum(v, 0)


@triton.jit
def _sums_a(x, pi, A, P):
    """A_t, P_t after each token of the chunk, 1 / (P_t + eps) and 1 / (1 + A_t / (P_t + eps)): [BT, BD], [BT]."""
    Ac = A[None, :] + tl.cumsum(pi[:, None] * (x * x), 0)
    rpe = _rcp(P + tl.cumsum(pi, 0) + 1e-8)
    return Ac, rpe, _rcp(1.0 + Ac * rpe[:, None])


@triton.jit
def _f_energy(w, bias, pos, S0, E, S_start, S_T, sync, part, T, tmax, NS, C: tl.constexpr, D: tl.constexpr,
              H: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr, PREFIX: tl.constexpr):
    c, s, _, lo, _, _ = _ticket(sync, NS, BT, T, False)
    b, h = c // H, c % H
    t = lo + tl.arange(0, BT)
    d = tl.arange(0, BD)
    dm = d < D
    x = _tile(w, b, t, T, h, C, D, BD)
    q = x * x
    own = tl.sum(q, 0)
    S, _ = _chain(sync, part, c, s, NS, own, 0.0, tl.load(S0 + c * D + d, mask=dm, other=0.0), 0.0, D, BD, False,
                  False, PREFIX)
    tl.store(S_start + (b * NS + s) * (H * D) + h * D + d, S, mask=dm)
    if s == NS - 1:
        tl.store(S_T + c * D + d, S + own, mask=dm)
    rden = _rcp(tl.maximum(S[None, :] + tl.cumsum(q, 0), 1e-12))
    e = tl.sum(q * rden, 1)
    if BOUNDED:
        e += D * tl.load(bias + h * tmax + tl.load(pos + b) + t, mask=t < T, other=0.0)
    tl.store(E + (b * T + t) * H + h, e, mask=t < T)


@triton.jit
def _f_output(w, temp, E, pi, A0, P0, y, AP_start, A_T, P_T, sync, part, T, NS, C: tl.constexpr, D: tl.constexpr,
              H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, PREFIX: tl.constexpr):
    c, s, _, lo, _, _ = _ticket(sync, NS, BT, T, False)
    b, h = c // H, c % H
    t = lo + tl.arange(0, BT)
    d = tl.arange(0, BD)
    dm = d < D
    hc = tl.arange(0, HP)
    z = tl.load(E + (b * T + t)[:, None] * H + hc[None, :], mask=(t < T)[:, None] & (hc < H)[None, :], other=0.0)
    z = tl.where((hc < H)[None, :], z * tl.load(temp + hc, mask=hc < H, other=0.0)[None, :], float("-inf"))
    zmax = tl.max(z, 1)
    own = tl.exp(_head(E, b, h, t, T, H) * tl.load(temp + h) - zmax)
    p = tl.where(t < T, own * _rcp(tl.sum(tl.exp(z - zmax[:, None]), 1)), 0.0)      # [BT]
    tl.store(pi + (b * T + t) * H + h, p, mask=t < T)
    x = _tile(w, b, t, T, h, C, D, BD)
    a = p[:, None] * (x * x)
    own_a, own_p = tl.sum(a, 0), tl.sum(p, 0)
    A, P = _chain(sync, part, c, s, NS, own_a, own_p, tl.load(A0 + c * D + d, mask=dm, other=0.0), tl.load(P0 + c),
                  D, BD, True, False, PREFIX)
    row = AP_start + (b * NS + s) * (H * D + H)
    tl.store(row + h * D + d, A, mask=dm)
    tl.store(row + H * D + h, P)
    if s == NS - 1:
        tl.store(A_T + c * D + d, A + own_a, mask=dm)
        tl.store(P_T + c, P + own_p)
    _, _, inv = _sums_a(x, p, A, P)
    out = -x * p[:, None] * inv
    tl.store(y + (b * T + t)[:, None] * C + h * D + d[None, :], out.to(y.dtype.element_ty),
             mask=(t < T)[:, None] & dm[None, :])


@triton.jit
def _b_pi(w, gy, pi, AP_start, gA_T, gP_T, gpi, R_after, gA0, gP0, sync, part, T, NS, C: tl.constexpr,
          D: tl.constexpr, H: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, PREFIX: tl.constexpr):
    # y = -x pi inv, inv = 1 / (1 + A rpe): with q = g x inv^2, d loss / d A_t = q pi rpe and
    # d loss / d P_t = -pi rpe^2 sum_d q A_t; d Pi_t = sum_d (RA_t x^2 - g x inv) + RP_t, where RA_t, RP_t flow
    # into A, P at token t from it and every later token.
    c, s, _, lo, _, _ = _ticket(sync, NS, BT, T, True)
    b, h = c // H, c % H
    t = lo + tl.arange(0, BT)
    d = tl.arange(0, BD)
    dm = d < D
    x = _tile(w, b, t, T, h, C, D, BD)
    g = _tile(gy, b, t, T, h, C, D, BD)
    p = _head(pi, b, h, t, T, H)
    row = AP_start + (b * NS + s) * (H * D + H)
    Ac, rpe, inv = _sums_a(x, p, tl.load(row + h * D + d, mask=dm, other=0.0), tl.load(row + H * D + h))
    gxi = g * inv * x
    prpe = p * rpe
    dA = gxi * inv * prpe[:, None]
    dP = -prpe * rpe * tl.sum(gxi * inv * Ac, 1)
    own_a, own_p = tl.sum(dA, 0), tl.sum(dP, 0)
    RA, RP = _chain(sync, part, c, s, NS, own_a, own_p, tl.load(gA_T + c * D + d, mask=dm, other=0.0),
                    tl.load(gP_T + c), D, BD, True, True, PREFIX)
    after = R_after + (b * NS + s) * (H * D + H)
    tl.store(after + h * D + d, RA, mask=dm)
    tl.store(after + H * D + h, RP)
    if s == 0:
        tl.store(gA0 + c * D + d, RA + own_a, mask=dm)
        tl.store(gP0 + c, RP + own_p)
    RAc = RA[None, :] + tl.cumsum(dA, 0, reverse=True)
    g_pi = tl.sum(RAc * (x * x) - gxi, 1) + (RP + tl.cumsum(dP, 0, reverse=True))
    tl.store(gpi + (b * T + t) * H + h, g_pi, mask=t < T)


@triton.jit
def _b_dw(w, gy, pi, gpi, S_start, AP_start, R_after, temp, bias, pos, gS_T, gtemp, gbias, dw, gS0, sync, part, T,
          tmax, NS, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BT: tl.constexpr, BOUNDED: tl.constexpr, PREFIX: tl.constexpr):
    # d e_t = temp_h Pi (d Pi - sum_h' Pi d Pi) over the token's heads; d loss / d S_t = -d e_t x^2 / S_t^2 where the
    # forward's max(S, eps) took S_t; dw = 2 x (Pi RA_t + d e_t / S_t + RS_t) - Pi g inv.
    c, s, _, lo, _, _ = _ticket(sync, NS, BT, T, True)
    b, h = c // H, c % H
    t = lo + tl.arange(0, BT)
    tm = t < T
    d = tl.arange(0, BD)
    dm = d < D
    hc = tl.arange(0, HP)
    heads = (b * T + t)[:, None] * H + hc[None, :]
    hm = tm[:, None] & (hc < H)[None, :]
    mix = tl.sum(tl.load(pi + heads, mask=hm, other=0.0) * tl.load(gpi + heads, mask=hm, other=0.0), 1)
    p = _head(pi, b, h, t, T, H)
    gz = p * (_head(gpi, b, h, t, T, H) - mix)           # d loss / d (temp_h e_t)
    ge = gz * tl.load(temp + h)
    x = _tile(w, b, t, T, h, C, D, BD)
    q = x * x
    Sc = tl.load(S_start + (b * NS + s) * (H * D) + h * D + d, mask=dm, other=0.0)[None, :] + tl.cumsum(q, 0)
    rden = _rcp(tl.maximum(Sc, 1e-12))
    wr = q * rden
    e = tl.sum(wr, 1)
    if BOUNDED:
        p0 = tl.load(pos + b)
        e += D * tl.load(bias + h * tmax + p0 + t, mask=tm, other=0.0)
        tl.atomic_add(gbias + h * tmax + p0 + t, D * ge, mask=tm, sem="relaxed")
    tl.atomic_add(gtemp + h, tl.sum(gz * e, 0), sem="relaxed")
    dS = tl.where(Sc > 1e-12, wr * rden, 0.0) * -ge[:, None]
    own = tl.sum(dS, 0)
    RS, _ = _chain(sync, part, c, s, NS, own, 0.0, tl.load(gS_T + c * D + d, mask=dm, other=0.0), 0.0, D, BD, False,
                   True, PREFIX)
    if s == 0:
        tl.store(gS0 + c * D + d, RS + own, mask=dm)
    row = AP_start + (b * NS + s) * (H * D + H)
    Ac, rpe, inv = _sums_a(x, p, tl.load(row + h * D + d, mask=dm, other=0.0), tl.load(row + H * D + h))
    g = _tile(gy, b, t, T, h, C, D, BD)
    gi = g * inv
    dA = gi * x * inv * (p * rpe)[:, None]
    after = R_after + (b * NS + s) * (H * D + H)
    RAc = tl.load(after + h * D + d, mask=dm, other=0.0)[None, :] + tl.cumsum(dA, 0, reverse=True)
    inner = p[:, None] * RAc + (ge[:, None] * rden + (RS[None, :] + tl.cumsum(dS, 0, reverse=True)))
    grad = (x + x) * inner - p[:, None] * gi
    tl.store(dw + (b * T + t)[:, None] * C + h * D + d[None, :], grad.to(dw.dtype.element_ty),
             mask=tm[:, None] & dm[None, :])


def _links(chains: int, NS: int, D: int, like: torch.Tensor):
    """A launch's look-back buffers: sync (its ticket counter and a flag per chunk, zeroed) and part (two rows of
    D + 1 per chunk)."""
    sync = torch.zeros(1 + chains * NS, device=like.device, dtype=torch.int32)
    return sync, alloc(chains * NS * 2 * (D + 1), like=like, dtype=torch.float32)


def forward(w, temp, bias, pos, S0, A0, P0, H: int, bounded: bool, BD: int, HP: int, BT: int, NS: int, prefix: bool,
            warps: int):
    """y [B, T, C], S_T, A_T, P_T, Pi [B, T, H], S_start [B, NS, H * D], AP_start [B, NS, H * D + H] (as
    causal_tssa._forward)."""
    B, T, C = w.shape
    D = C // H
    opts = launch_options(warps)
    grid = (B * H * NS,)
    S_start = alloc(B, NS, C, like=w, dtype=torch.float32)
    AP_start = alloc(B, NS, C + H, like=w, dtype=torch.float32)
    S_T, A_T, P_T = alloc(*S0.shape, like=S0), alloc(*A0.shape, like=A0), alloc(*P0.shape, like=P0)
    E, pi = alloc(B, T, H, like=w, dtype=torch.float32), alloc(B, T, H, like=w, dtype=torch.float32)
    y = alloc(B, T, C, like=w)
    tmax = bias.shape[1]
    _f_energy[grid](w, bias, pos, S0, E, S_start, S_T, *_links(B * H, NS, D, w), T, tmax, NS, C, D, H, BD, BT, bounded,
                    prefix, **opts)
    _f_output[grid](w, temp, E, pi, A0, P0, y, AP_start, A_T, P_T, *_links(B * H, NS, D, w), T, NS, C, D, H, HP, BD,
                    BT, prefix, **opts)
    return y, S_T, A_T, P_T, pi, S_start, AP_start


def backward(gy, gS_T, gA_T, gP_T, w, pi, temp, bias, pos, S_start, AP_start, gtemp, gbias, H: int, bounded: bool,
             BD: int, HP: int, BT: int, NS: int, prefix: bool, warps: int):
    """dw, gS0, gA0, gP0 (as causal_tssa._backward); gtemp [H] and gbias [H, Tmax] are zeroed fp32 accumulators."""
    B, T, C = w.shape
    D = C // H
    opts = launch_options(warps)
    grid = (B * H * NS,)
    gS0, gA0 = alloc(B, H, D, like=w, dtype=torch.float32), alloc(B, H, D, like=w, dtype=torch.float32)
    gP0 = alloc(B, H, like=w, dtype=torch.float32)
    gpi = alloc(B, T, H, like=w, dtype=torch.float32)
    R_after = alloc(B, NS, C + H, like=w, dtype=torch.float32)
    dw = alloc(B, T, C, like=w)
    _b_pi[grid](w, gy, pi, AP_start, gA_T, gP_T, gpi, R_after, gA0, gP0, *_links(B * H, NS, D, w), T, NS, C, D, H, BD,
                BT, prefix, **opts)
    _b_dw[grid](w, gy, pi, gpi, S_start, AP_start, R_after, temp, bias, pos, gS_T, gtemp, gbias, dw, gS0,
                *_links(B * H, NS, D, w), T, bias.shape[1], NS, C, D, H, HP, BD, BT, bounded, prefix, **opts)
    return dw, gS0, gA0, gP0
