"""Fused TSSA (bidirectional) forward and backward.

Tiles are whole token rows viewed as [tokens, heads, channels] (w is [B, N, C], C = H*D head-major), so every
load is contiguous and the softmax over heads stays inside one program. Each program owns a slice of tokens of
one batch element; per-channel statistics are written as per-slice partials and summed.

Forward, three passes over w:
  1. S = sum_n w^2                                                    (read w)
  2. Pi = softmax_h(temp_h * sum_d w^2 / S); A = sum_n Pi w^2; P = sum_n Pi   (read w, write Pi [B, N, H])
  3. y = -w * Pi / (1 + A / (P + 1e-8))                               (read w and Pi, write y)
Backward recomputes Pi from w and the per-channel statistics (no per-token tensor is kept between passes):
  1. G = sum_n dy w Pi / (1 + dots)^2                                  (read w, dy)
  2. d temp and dS partials                                           (read w, dy)
  3. dw                                                               (read w, dy, write dw)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tssa.naive import check_temp, check_w
from .utils import alloc, check_available, next_pow2

PROGRAMS = 1024  # programs a launch aims for (a large GPU holds a few per SM)

NORM_EPS_SQ = 1e-24   # (F.normalize's eps 1e-12)^2, applied to the sum of squares
PI_EPS = 1e-8


@triton.jit
def _offsets(b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
             BN: tl.constexpr):
    n = n0 + tl.arange(0, BN)[:, None, None]
    h = tl.arange(0, HP)[None, :, None]
    d = tl.arange(0, BD)[None, None, :]
    return b * N * C + n * C + h * D + d, (n < N) & (h < H) & (d < D)


@triton.jit
def _stat_offsets(H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr):
    h = tl.arange(0, HP)[:, None]
    d = tl.arange(0, BD)[None, :]
    return h * D + d, (h < H) & (d < D)


@triton.jit
def _pi(x, S, temp_ptr, H: tl.constexpr, HP: tl.constexpr):
    """x [BN, HP, BD], S [HP, BD] (clamped) -> Pi, energy [BN, HP] (softmax over heads)."""
    e = tl.sum(x * x / S[None, :, :], 2)
    hc = tl.arange(0, HP)
    t = tl.load(temp_ptr + hc, mask=hc < H, other=0.0)
    z = tl.where(hc[None, :] < H, e * t[None, :], float("-inf"))
    z = z - tl.max(z, 1)[:, None]
    p = tl.exp(z)
    return p / tl.sum(p, 1)[:, None], e


@triton.jit
def _fwd_sumsq(w, S_part, N, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
               BD: tl.constexpr, BN: tl.constexpr):
    b, s = tl.program_id(0), tl.program_id(1)
    acc = tl.zeros([HP, BD], dtype=tl.float32)
    for n0 in range(s * per, tl.minimum(s * per + per, N), BN):
        off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN)
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(x * x, 0)
    so, sm = _stat_offsets(H, D, HP, BD)
    tl.store(S_part + (b * tl.num_programs(1) + s) * H * D + so, acc, mask=sm)


@triton.jit
def _fwd_pi(w, S, temp, pi_out, A_part, P_part, N, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
            HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    b, s = tl.program_id(0), tl.program_id(1)
    so, sm = _stat_offsets(H, D, HP, BD)
    Sv = tl.maximum(tl.load(S + b * H * D + so, mask=sm, other=1.0), 1e-24)
    A = tl.zeros([HP, BD], dtype=tl.float32)
    P = tl.zeros([HP], dtype=tl.float32)
    hc = tl.arange(0, HP)
    for n0 in range(s * per, tl.minimum(s * per + per, N), BN):
        off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN)
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        pi, _ = _pi(x, Sv, temp, H, HP)
        n = n0 + tl.arange(0, BN)
        pi = tl.where(n[:, None] < N, pi, 0.0)
        tl.store(pi_out + (b * N + n[:, None]) * H + hc[None, :], pi, mask=(n[:, None] < N) & (hc[None, :] < H))
        A += tl.sum(pi[:, :, None] * x * x, 0)
        P += tl.sum(pi, 0)
    k = b * tl.num_programs(1) + s
    tl.store(A_part + k * H * D + so, A, mask=sm)
    tl.store(P_part + k * H + hc, P, mask=hc < H)


@triton.jit
def _fwd_out(w, pi, A, P, y, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
             BD: tl.constexpr, BN: tl.constexpr):
    b, nb = tl.program_id(0), tl.program_id(1)
    n0 = nb * BN
    off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN)
    so, sm = _stat_offsets(H, D, HP, BD)
    hc = tl.arange(0, HP)
    n = n0 + tl.arange(0, BN)
    x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
    p = tl.load(pi + (b * N + n[:, None]) * H + hc[None, :], mask=(n[:, None] < N) & (hc[None, :] < H), other=0.0)
    dots = tl.load(A + b * H * D + so, mask=sm, other=0.0) / (tl.load(P + b * H + hc, mask=hc < H, other=0.0) + 1e-8)[:, None]
    out = -x * p[:, :, None] / (1.0 + dots[None, :, :])
    tl.store(y + off, out.to(y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_g(w, gy, S, temp, A, P, G_part, N, per, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
           HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    b, s = tl.program_id(0), tl.program_id(1)
    so, sm = _stat_offsets(H, D, HP, BD)
    hc = tl.arange(0, HP)
    Sv = tl.maximum(tl.load(S + b * H * D + so, mask=sm, other=1.0), 1e-24)
    Pe = tl.load(P + b * H + hc, mask=hc < H, other=0.0) + 1e-8
    inv = 1.0 / (1.0 + tl.load(A + b * H * D + so, mask=sm, other=0.0) / Pe[:, None])
    G = tl.zeros([HP, BD], dtype=tl.float32)
    for n0 in range(s * per, tl.minimum(s * per + per, N), BN):
        off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN)
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        pi, _ = _pi(x, Sv, temp, H, HP)
        G += tl.sum(g * x * pi[:, :, None] * (inv * inv)[None, :, :], 0)
    tl.store(G_part + (b * tl.num_programs(1) + s) * H * D + so, G, mask=sm)


@triton.jit
def _bwd_dw(w, gy, S, temp, A, P, G, gP, dS, dw, gtemp_part, dS_part, N, per, C: tl.constexpr, D: tl.constexpr,
            H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, FINAL: tl.constexpr):
    # FINAL=False: partial sums of d temp and dS.  FINAL=True: dw, with dS known.
    b, s = tl.program_id(0), tl.program_id(1)
    so, sm = _stat_offsets(H, D, HP, BD)
    hc = tl.arange(0, HP)
    Sv = tl.maximum(tl.load(S + b * H * D + so, mask=sm, other=1.0), 1e-24)
    Pe = tl.load(P + b * H + hc, mask=hc < H, other=0.0) + 1e-8
    inv = 1.0 / (1.0 + tl.load(A + b * H * D + so, mask=sm, other=0.0) / Pe[:, None])
    Gs = tl.load(G + b * H * D + so, mask=sm, other=0.0) / Pe[:, None]
    gPv = tl.load(gP + b * H + hc, mask=hc < H, other=0.0)
    t = tl.load(temp + hc, mask=hc < H, other=0.0)
    dSv = tl.load(dS + b * H * D + so, mask=sm, other=0.0)
    gt = tl.zeros([HP], dtype=tl.float32)
    dSacc = tl.zeros([HP, BD], dtype=tl.float32)
    for n0 in range(s * per, tl.minimum(s * per + per, N), BN):
        off, m = _offsets(b, n0, N, C, D, H, HP, BD, BN)
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        pi, e = _pi(x, Sv, temp, H, HP)
        gpi = tl.sum(-x * g * inv[None, :, :] + Gs[None, :, :] * x * x, 2) + gPv[None, :]
        gz = pi * (gpi - tl.sum(pi * gpi, 1)[:, None])                # softmax over heads
        n = n0 + tl.arange(0, BN)
        gz = tl.where((n[:, None] < N) & (hc[None, :] < H), gz, 0.0)
        ge = gz * t[None, :]
        if FINAL:
            grad = (-pi[:, :, None] * inv[None, :, :] * g + 2.0 * Gs[None, :, :] * pi[:, :, None] * x
                    + ge[:, :, None] * 2.0 * x / Sv[None, :, :] + 2.0 * x * dSv[None, :, :])
            tl.store(dw + off, grad.to(dw.dtype.element_ty), mask=m)
        else:
            gt += tl.sum(gz * e, 0)
            dSacc += tl.sum(ge[:, :, None] * x * x, 0)
    if not FINAL:
        k = b * tl.num_programs(1) + s
        tl.store(gtemp_part + k * HP + hc, gt)
        tl.store(dS_part + k * H * D + so, -dSacc / (Sv * Sv), mask=sm)


def _cfg(B: int, N: int, H: int, D: int):
    BD = max(2, next_pow2(D))
    HP = max(2, next_pow2(H))
    BN = max(2, min(64, next_pow2(N), 4096 // (HP * BD)))  # tiles of at most 4096 elements
    # enough programs per batch element to fill a large GPU, each over a contiguous token slice
    slices = max(1, min(triton.cdiv(N, BN), triton.cdiv(PROGRAMS, max(B, 1))))
    per = triton.cdiv(triton.cdiv(N, slices), BN) * BN
    slices = triton.cdiv(N, per)
    return BD, HP, BN, slices, per


class TSSAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, temp, num_heads):
        B, N, H, D = check_w(w, num_heads)
        w = w.contiguous()
        C = H * D
        temp32 = temp.float().contiguous()
        BD, HP, BN, slices, per = _cfg(B, N, H, D)
        S_part = alloc(B, slices, H, D, like=w, dtype=torch.float32)
        _fwd_sumsq[(B, slices)](w, S_part, N, per, C, D, H, HP, BD, BN)
        S = S_part.sum(1)
        pi = alloc(B, N, H, like=w, dtype=torch.float32)
        A_part = alloc(B, slices, H, D, like=w, dtype=torch.float32)
        P_part = alloc(B, slices, H, like=w, dtype=torch.float32)
        _fwd_pi[(B, slices)](w, S, temp32, pi, A_part, P_part, N, per, C, D, H, HP, BD, BN)
        A, P = A_part.sum(1), P_part.sum(1)
        y = alloc(B, N, C, like=w)
        _fwd_out[(B, triton.cdiv(N, BN))](w, pi, A, P, y, N, C, D, H, HP, BD, BN)
        ctx.save_for_backward(w, temp32, S, A, P)
        ctx.num_heads, ctx.temp_dtype = H, temp.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        w, temp, S, A, P = ctx.saved_tensors
        H = ctx.num_heads
        B, N, C = w.shape
        D = C // H
        gy = gy.contiguous()
        BD, HP, BN, slices, per = _cfg(B, N, H, D)
        G_part = alloc(B, slices, H, D, like=w, dtype=torch.float32)
        _bwd_g[(B, slices)](w, gy, S, temp, A, P, G_part, N, per, C, D, H, HP, BD, BN)
        G = G_part.sum(1)
        gP = (-(G * A).sum(-1) / (P + PI_EPS) ** 2).contiguous()                # [B, H]
        gtemp_part = alloc(B, slices, HP, like=w, dtype=torch.float32)
        dS_part = alloc(B, slices, H, D, like=w, dtype=torch.float32)
        zeros = torch.zeros_like(S)
        _bwd_dw[(B, slices)](w, gy, S, temp, A, P, G, gP, zeros, w, gtemp_part, dS_part, N, per, C, D, H, HP, BD,
                             BN, False)
        dS = torch.where(S > NORM_EPS_SQ, dS_part.sum(1), zeros).contiguous()
        dw = alloc(B, N, C, like=w)
        _bwd_dw[(B, slices)](w, gy, S, temp, A, P, G, gP, dS, dw, gtemp_part, dS_part, N, per, C, D, H, HP, BD,
                             BN, True)
        gtemp = gtemp_part.sum((0, 1))[:H].to(ctx.temp_dtype)
        return dw, gtemp, None


def triton_tssa(w: torch.Tensor, temp: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Fused TSSA. w: [B, N, C] (fp32/fp16/bf16), temp: [H] or [H, 1] -> y: [B, N, C] in w's dtype."""
    check_w(w, num_heads)
    t = check_temp(temp, num_heads)
    check_available(w, t)
    return TSSAFunction.apply(w, t, num_heads)
