"""Chunked causal TSSA forward and backward: cumulative sums inside a chunk, fp32 state carried across chunks.

Split in two scans so the softmax over heads (which couples the heads of a token) stays a small torch op:
  energy scan   per (b, h): c = S0 + cumsum(w^2), e = sum_d w^2 / max(c, 1e-12)          -> e [B, T, H], S_T
  (torch)       Pi = softmax_h(temp_h * (e + D * denom_bias[h, pos]))                    [B, T, H]
  output scan   per (b, h): a = A0 + cumsum(Pi w^2), p = P0 + cumsum(Pi), y = -w Pi / (1 + a / (p + 1e-8))
Backward runs both scans in reverse from the chunk-start states saved by the forward (one per chunk, not per token).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..causal_tssa.state import CausalTSSAState, gather_bias, prepare
from .utils import alloc, check_available, next_pow2


@triton.jit
def _energy_fwd(w, S0, e, S_out, S_chunks, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                BD: tl.constexpr, BT: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    d = tl.arange(0, BD)
    dm = d < D
    S = tl.load(S0 + bh * D + d, mask=dm, other=0.0)
    NT = tl.cdiv(T, BT)
    for c in range(0, NT):
        t = c * BT + tl.arange(0, BT)
        m = (t[:, None] < T) & dm[None, :]
        x = tl.load(w + b * T * C + t[:, None] * C + h * D + d[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(S_chunks + (bh * NT + c) * D + d, S, mask=dm)
        wsq = x * x
        cs = S[None, :] + tl.cumsum(wsq, 0)
        en = tl.sum(tl.where(m, wsq / tl.maximum(cs, 1e-12), 0.0), 1)
        tl.store(e + (b * T + t) * H + h, en, mask=t < T)
        S += tl.sum(wsq, 0)
    tl.store(S_out + bh * D + d, S, mask=dm)


@triton.jit
def _energy_bwd(w, ge, gS_T, S_chunks, dw, gS0, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                BD: tl.constexpr, BT: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    d = tl.arange(0, BD)
    dm = d < D
    G = tl.load(gS_T + bh * D + d, mask=dm, other=0.0)       # gradient carried from later tokens
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        c = NT - 1 - i
        t = c * BT + tl.arange(0, BT)
        m = (t[:, None] < T) & dm[None, :]
        off = b * T * C + t[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(ge + (b * T + t) * H + h, mask=t < T, other=0.0)
        S = tl.load(S_chunks + (bh * NT + c) * D + d, mask=dm, other=0.0)
        wsq = x * x
        cs = S[None, :] + tl.cumsum(wsq, 0)
        den = tl.maximum(cs, 1e-12)
        gc = tl.where(m & (cs > 1e-12), -g[:, None] * wsq / (den * den), 0.0)
        rev = tl.sum(gc, 0)[None, :] - tl.cumsum(gc, 0) + gc + G[None, :]   # sum over t' >= t
        grad = g[:, None] * 2.0 * x / den + 2.0 * x * rev
        tl.store(dw + off, grad, mask=m)
        G += tl.sum(gc, 0)
    tl.store(gS0 + bh * D + d, G, mask=dm)


@triton.jit
def _out_fwd(w, pi, A0, P0, y, A_out, P_out, A_chunks, P_chunks, T, C: tl.constexpr, D: tl.constexpr,
             H: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    d = tl.arange(0, BD)
    dm = d < D
    A = tl.load(A0 + bh * D + d, mask=dm, other=0.0)
    P = tl.load(P0 + bh)
    NT = tl.cdiv(T, BT)
    for c in range(0, NT):
        t = c * BT + tl.arange(0, BT)
        m = (t[:, None] < T) & dm[None, :]
        off = b * T * C + t[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        p = tl.load(pi + (b * T + t) * H + h, mask=t < T, other=0.0)
        tl.store(A_chunks + (bh * NT + c) * D + d, A, mask=dm)
        tl.store(P_chunks + bh * NT + c, P)
        pw = p[:, None] * x * x
        a = A[None, :] + tl.cumsum(pw, 0)
        pc = P + tl.cumsum(p, 0)
        out = -x * p[:, None] / (1.0 + a / (pc + 1e-8)[:, None])
        tl.store(y + off, out.to(y.dtype.element_ty), mask=m)
        A += tl.sum(pw, 0)
        P += tl.sum(p, 0)
    tl.store(A_out + bh * D + d, A, mask=dm)
    tl.store(P_out + bh, P)


@triton.jit
def _out_bwd(w, pi, gy, gA_T, gP_T, A_chunks, P_chunks, dw, gpi, gA0, gP0, T, C: tl.constexpr, D: tl.constexpr,
             H: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    d = tl.arange(0, BD)
    dm = d < D
    Ga = tl.load(gA_T + bh * D + d, mask=dm, other=0.0)
    Gp = tl.load(gP_T + bh)
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        c = NT - 1 - i
        t = c * BT + tl.arange(0, BT)
        tm = t < T
        m = tm[:, None] & dm[None, :]
        off = b * T * C + t[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        p = tl.load(pi + (b * T + t) * H + h, mask=tm, other=0.0)
        A = tl.load(A_chunks + (bh * NT + c) * D + d, mask=dm, other=0.0)
        P = tl.load(P_chunks + bh * NT + c)
        a = A[None, :] + tl.cumsum(p[:, None] * x * x, 0)
        pe = P + tl.cumsum(p, 0) + 1e-8
        inv = 1.0 / (1.0 + a / pe[:, None])
        gdots = g * x * p[:, None] * inv * inv
        ga = tl.where(m, gdots / pe[:, None], 0.0)
        gp = tl.where(tm, -tl.sum(gdots * a, 1) / (pe * pe), 0.0)
        Ra = tl.sum(ga, 0)[None, :] - tl.cumsum(ga, 0) + ga + Ga[None, :]
        Rp = tl.sum(gp, 0) - tl.cumsum(gp, 0) + gp + Gp
        gpt = tl.sum(-x * g * inv + Ra * x * x, 1) + Rp
        tl.store(gpi + (b * T + t) * H + h, gpt, mask=tm)
        tl.store(dw + off, -p[:, None] * g * inv + 2.0 * Ra * p[:, None] * x, mask=m)
        Ga += tl.sum(ga, 0)
        Gp += tl.sum(gp, 0)
    tl.store(gA0 + bh * D + d, Ga, mask=dm)
    tl.store(gP0 + bh, Gp)


def _bt(T: int, BD: int) -> int:
    return max(16, min(64, next_pow2(T), 8192 // BD))


class EnergyScan(torch.autograd.Function):
    """(w [B, T, C], S0 [B, H, D]) -> (e [B, T, H], S_T [B, H, D]); e = sum_d w^2 / max(S0 + cumsum w^2, 1e-12)."""

    @staticmethod
    def forward(ctx, w, S0, H):
        B, T, C = w.shape
        D = C // H
        BD = max(16, next_pow2(D))
        BT = _bt(T, BD)
        NT = triton.cdiv(T, BT)
        e = alloc(B, T, H, like=w, dtype=torch.float32)
        S_T = alloc(B, H, D, like=w, dtype=torch.float32)
        S_chunks = alloc(B, H, NT, D, like=w, dtype=torch.float32)
        _energy_fwd[(B * H,)](w, S0, e, S_T, S_chunks, T, C, D, H, BD, BT)
        ctx.save_for_backward(w, S_chunks)
        ctx.H, ctx.BD, ctx.BT = H, BD, BT
        return e, S_T

    @staticmethod
    def backward(ctx, ge, gS_T):
        w, S_chunks = ctx.saved_tensors
        B, T, C = w.shape
        H, BD, BT = ctx.H, ctx.BD, ctx.BT
        D = C // H
        ge = torch.zeros(B, T, H, device=w.device) if ge is None else ge.float().contiguous()
        gS_T = torch.zeros(B, H, D, device=w.device) if gS_T is None else gS_T.float().contiguous()
        dw = alloc(B, T, C, like=w, dtype=torch.float32)
        gS0 = alloc(B, H, D, like=w, dtype=torch.float32)
        _energy_bwd[(B * H,)](w, ge, gS_T, S_chunks, dw, gS0, T, C, D, H, BD, BT)
        return dw.to(w.dtype), gS0, None


class OutputScan(torch.autograd.Function):
    """(w [B, T, C], Pi [B, T, H], A0 [B, H, D], P0 [B, H]) -> (y [B, T, C], A_T, P_T)."""

    @staticmethod
    def forward(ctx, w, pi, A0, P0, H):
        B, T, C = w.shape
        D = C // H
        BD = max(16, next_pow2(D))
        BT = _bt(T, BD)
        NT = triton.cdiv(T, BT)
        y = alloc(B, T, C, like=w)
        A_T = alloc(B, H, D, like=w, dtype=torch.float32)
        P_T = alloc(B, H, like=w, dtype=torch.float32)
        A_chunks = alloc(B, H, NT, D, like=w, dtype=torch.float32)
        P_chunks = alloc(B, H, NT, like=w, dtype=torch.float32)
        _out_fwd[(B * H,)](w, pi, A0, P0, y, A_T, P_T, A_chunks, P_chunks, T, C, D, H, BD, BT)
        ctx.save_for_backward(w, pi, A_chunks, P_chunks)
        ctx.H, ctx.BD, ctx.BT = H, BD, BT
        return y, A_T, P_T

    @staticmethod
    def backward(ctx, gy, gA_T, gP_T):
        w, pi, A_chunks, P_chunks = ctx.saved_tensors
        B, T, C = w.shape
        H, BD, BT = ctx.H, ctx.BD, ctx.BT
        D = C // H
        gy = torch.zeros_like(w) if gy is None else gy.contiguous()
        gA_T = torch.zeros(B, H, D, device=w.device) if gA_T is None else gA_T.float().contiguous()
        gP_T = torch.zeros(B, H, device=w.device) if gP_T is None else gP_T.float().contiguous()
        dw = alloc(B, T, C, like=w, dtype=torch.float32)
        gpi = alloc(B, T, H, like=w, dtype=torch.float32)
        gA0 = alloc(B, H, D, like=w, dtype=torch.float32)
        gP0 = alloc(B, H, like=w, dtype=torch.float32)
        _out_bwd[(B * H,)](w, pi, gy, gA_T, gP_T, A_chunks, P_chunks, dw, gpi, gA0, gP0, T, C, D, H, BD, BT)
        return dw.to(w.dtype), gpi, gA0, gP0, None


def triton_causal_tssa(w, temp, denom_bias, num_heads, state=None, pos0=0):
    """Chunked causal TSSA; same contract as tost_edge.ops.causal_tssa (w: [B, T, C], state fp32)."""
    B, T, H, D, temp, bias, state, pos = prepare(w, temp, denom_bias, num_heads, state, pos0)
    check_available(w, temp)
    if T == 0:
        return w.clone(), state
    w = w.contiguous()
    e, S_T = EnergyScan.apply(w, state.sum_wsq.float().contiguous(), H)
    e = e + D * gather_bias(bias, pos, T, H, torch.float32)                   # [B, T, H]
    pi = torch.softmax(e * temp.float(), dim=-1).contiguous()
    y, A_T, P_T = OutputScan.apply(w, pi, state.sum_pi_wsq.float().contiguous(), state.sum_pi.float().contiguous(), H)
    return y, CausalTSSAState(S_T, A_T, P_T)
