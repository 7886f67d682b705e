"""Fused TSSA (bidirectional) forward and backward.

Forward, three passes over w ([B, N, C], C = H*D head-major):
  1. per (b, h, d): S = sum_n w^2                                   (read w)
  2. per token block: Pi = softmax_h(temp_h * sum_d w^2 / S), and per-block partials of
     A = sum_n Pi w^2 and P = sum_n Pi                              (read w; the tile is re-read from cache)
  3. y = -w * Pi / (1 + A / (P + 1e-8))                             (read w and Pi [B, N, H], write y)
Backward recomputes Pi from w and the per-channel statistics (no per-token tensor is saved).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tssa.naive import check_temp, check_w
from .utils import alloc, check_available, next_pow2

NORM_EPS_SQ = 1e-24   # (F.normalize's eps 1e-12)^2, applied to the sum of squares
PI_EPS = 1e-8


@triton.jit
def _sumsq_kernel(w, out, N, C: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                  SPLIT: tl.constexpr):
    # grid (B * H, SPLIT): partial sum over a slice of tokens of w^2 per channel
    bh, s = tl.program_id(0), tl.program_id(1)
    H: tl.constexpr = C // D
    b, h = bh // H, bh % H
    d = tl.arange(0, BD)
    per = tl.cdiv(tl.cdiv(N, SPLIT), BN) * BN
    acc = tl.zeros([BD], dtype=tl.float32)
    for n0 in range(s * per, tl.minimum((s + 1) * per, N), BN):
        n = n0 + tl.arange(0, BN)
        m = (n[:, None] < N) & (d[None, :] < D)
        x = tl.load(w + b * N * C + n[:, None] * C + h * D + d[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(x * x, 0)
    tl.store(out + (bh * SPLIT + s) * D + d, acc, mask=d < D)


@triton.jit
def _token_pi(w, S, temp, b, n, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, BD: tl.constexpr,
              HP: tl.constexpr, BN: tl.constexpr):
    """Pi and energy [BN, HP] for the tokens n of batch b (softmax over heads)."""
    d = tl.arange(0, BD)
    hc = tl.arange(0, HP)
    E = tl.zeros([BN, HP], dtype=tl.float32)
    for h in tl.static_range(H):
        m = (n[:, None] < N) & (d[None, :] < D)
        x = tl.load(w + b * N * C + n[:, None] * C + h * D + d[None, :], mask=m, other=0.0).to(tl.float32)
        s = tl.load(S + (b * H + h) * D + d, mask=d < D, other=1.0)
        e = tl.sum(x * x / tl.maximum(s, 1e-24)[None, :], 1)
        E = tl.where(hc[None, :] == h, e[:, None], E)
    t = tl.load(temp + hc, mask=hc < H, other=0.0)
    z = tl.where(hc[None, :] < H, E * t[None, :], float("-inf"))
    z = z - tl.max(z, 1)[:, None]
    p = tl.exp(z)
    return p / tl.sum(p, 1)[:, None], E


@triton.jit
def _pi_stats_kernel(w, S, temp, pi_out, A_part, P_part, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                     BD: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr):
    # grid (B, NB): Pi for a token block, and its partial sums of Pi w^2 and Pi
    b, nb = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    n = nb * BN + tl.arange(0, BN)
    d = tl.arange(0, BD)
    hc = tl.arange(0, HP)
    pi, _ = _token_pi(w, S, temp, b, n, N, C, D, H, BD, HP, BN)
    tl.store(pi_out + (b * N + n[:, None]) * H + hc[None, :], pi, mask=(n[:, None] < N) & (hc[None, :] < H))
    for h in tl.static_range(H):
        m = (n[:, None] < N) & (d[None, :] < D)
        x = tl.load(w + b * N * C + n[:, None] * C + h * D + d[None, :], mask=m, other=0.0).to(tl.float32)
        ph = tl.sum(tl.where(hc[None, :] == h, pi, 0.0), 1)
        ph = tl.where(n < N, ph, 0.0)
        tl.store(A_part + ((b * NB + nb) * H + h) * D + d, tl.sum(ph[:, None] * x * x, 0), mask=d < D)
        tl.store(P_part + (b * NB + nb) * H + h, tl.sum(ph, 0))


@triton.jit
def _out_kernel(w, pi, A, P, y, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, BD: tl.constexpr,
                BN: tl.constexpr):
    # grid (B * H, NB): y = -w * Pi / (1 + A / (P + eps))
    bh, nb = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    n = nb * BN + tl.arange(0, BN)
    d = tl.arange(0, BD)
    m = (n[:, None] < N) & (d[None, :] < D)
    off = b * N * C + n[:, None] * C + h * D + d[None, :]
    x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
    ph = tl.load(pi + (b * N + n) * H + h, mask=n < N, other=0.0)
    dots = tl.load(A + bh * D + d, mask=d < D, other=0.0) / (tl.load(P + bh) + 1e-8)
    out = -x * ph[:, None] / (1.0 + dots[None, :])
    tl.store(y + off, out.to(y.dtype.element_ty), mask=m)


@triton.jit
def _bwd_g_kernel(w, gy, S, temp, A, P, G_part, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                  BD: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr):
    # grid (B, NB): partial G[b, h, d] = sum_n gy * w * Pi / (1 + dots)^2
    b, nb = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    n = nb * BN + tl.arange(0, BN)
    d = tl.arange(0, BD)
    hc = tl.arange(0, HP)
    pi, _ = _token_pi(w, S, temp, b, n, N, C, D, H, BD, HP, BN)
    for h in tl.static_range(H):
        m = (n[:, None] < N) & (d[None, :] < D)
        off = b * N * C + n[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        ph = tl.sum(tl.where(hc[None, :] == h, pi, 0.0), 1)
        dots = tl.load(A + (b * H + h) * D + d, mask=d < D, other=0.0) / (tl.load(P + b * H + h) + 1e-8)
        inv = 1.0 / (1.0 + dots)
        tl.store(G_part + ((b * NB + nb) * H + h) * D + d, tl.sum(g * x * ph[:, None] * (inv * inv)[None, :], 0),
                 mask=d < D)


@triton.jit
def _bwd_dw_kernel(w, gy, S, temp, A, P, G, gP, dw, gtemp_part, dS_part, N, C: tl.constexpr, D: tl.constexpr,
                   H: tl.constexpr, BD: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr):
    # grid (B, NB): dw except the path through S, partial d temp and d S
    b, nb = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    n = nb * BN + tl.arange(0, BN)
    d = tl.arange(0, BD)
    hc = tl.arange(0, HP)
    m = (n[:, None] < N) & (d[None, :] < D)
    pi, E = _token_pi(w, S, temp, b, n, N, C, D, H, BD, HP, BN)
    gpi = tl.zeros([BN, HP], dtype=tl.float32)
    for h in tl.static_range(H):
        off = b * N * C + n[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        Pe = tl.load(P + b * H + h) + 1e-8
        dots = tl.load(A + (b * H + h) * D + d, mask=d < D, other=0.0) / Pe
        inv = 1.0 / (1.0 + dots)
        Gs = tl.load(G + (b * H + h) * D + d, mask=d < D, other=0.0) / Pe
        gp = tl.sum(-x * g * inv[None, :] + Gs[None, :] * x * x, 1) + tl.load(gP + b * H + h)
        gpi = tl.where(hc[None, :] == h, gp[:, None], gpi)
    gz = pi * (gpi - tl.sum(pi * gpi, 1)[:, None])                 # softmax over heads
    gz = tl.where(n[:, None] < N, gz, 0.0)
    t = tl.load(temp + hc, mask=hc < H, other=0.0)
    tl.store(gtemp_part + (b * NB + nb) * HP + hc, tl.sum(gz * E, 0))
    ge = gz * t[None, :]
    for h in tl.static_range(H):
        off = b * N * C + n[:, None] * C + h * D + d[None, :]
        x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gy + off, mask=m, other=0.0).to(tl.float32)
        ph = tl.sum(tl.where(hc[None, :] == h, pi, 0.0), 1)
        geh = tl.sum(tl.where(hc[None, :] == h, ge, 0.0), 1)
        Pe = tl.load(P + b * H + h) + 1e-8
        dots = tl.load(A + (b * H + h) * D + d, mask=d < D, other=0.0) / Pe
        inv = 1.0 / (1.0 + dots)
        Gs = tl.load(G + (b * H + h) * D + d, mask=d < D, other=0.0) / Pe
        s = tl.maximum(tl.load(S + (b * H + h) * D + d, mask=d < D, other=1.0), 1e-24)
        grad = -ph[:, None] * inv[None, :] * g + 2.0 * Gs[None, :] * ph[:, None] * x + geh[:, None] * 2.0 * x / s[None, :]
        tl.store(dw + off, grad, mask=m)
        tl.store(dS_part + ((b * NB + nb) * H + h) * D + d, -tl.sum(geh[:, None] * x * x, 0) / (s * s), mask=d < D)


@triton.jit
def _bwd_s_kernel(w, dw, dS, out, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, BD: tl.constexpr,
                  BN: tl.constexpr):
    # grid (B * H, NB): dw += 2 w dS (the path through the sum of squares)
    bh, nb = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    n = nb * BN + tl.arange(0, BN)
    d = tl.arange(0, BD)
    m = (n[:, None] < N) & (d[None, :] < D)
    off = b * N * C + n[:, None] * C + h * D + d[None, :]
    x = tl.load(w + off, mask=m, other=0.0).to(tl.float32)
    g = tl.load(dw + off, mask=m, other=0.0)
    ds = tl.load(dS + bh * D + d, mask=d < D, other=0.0)
    tl.store(out + off, (g + 2.0 * x * ds[None, :]).to(out.dtype.element_ty), mask=m)


def _blocks(N: int, D: int, H: int):
    BD = max(16, next_pow2(D))
    HP = max(2, next_pow2(H))
    BN = max(16, min(64, next_pow2(N), 4096 // BD))
    return BD, HP, BN


def _split(B: int, H: int, N: int, BN: int) -> int:
    target = 512  # enough programs to fill a large GPU
    return max(1, min(triton.cdiv(N, BN), triton.cdiv(target, B * H)))


def _stats(w, temp, H, D):
    B, N, C = w.shape
    BD, HP, BN = _blocks(N, D, H)
    split = _split(B, H, N, BN)
    S_part = alloc(B * H, split, D, like=w, dtype=torch.float32)
    _sumsq_kernel[(B * H, split)](w, S_part, N, C, D, BD, BN, split)
    S = S_part.sum(1).view(B, H, D)
    NB = triton.cdiv(N, BN)
    pi = alloc(B, N, H, like=w, dtype=torch.float32)
    A_part = alloc(B, NB, H, D, like=w, dtype=torch.float32)
    P_part = alloc(B, NB, H, like=w, dtype=torch.float32)
    _pi_stats_kernel[(B, NB)](w, S, temp, pi, A_part, P_part, N, C, D, H, BD, HP, BN)
    return S, pi, A_part.sum(1), P_part.sum(1)


class TSSAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, temp, num_heads):
        B, N, H, D = check_w(w, num_heads)
        w = w.contiguous()
        temp32 = temp.float().contiguous()
        S, pi, A, P = _stats(w, temp32, H, D)
        BD, HP, BN = _blocks(N, D, H)
        y = alloc(B, N, H * D, like=w)
        _out_kernel[(B * H, triton.cdiv(N, BN))](w, pi, A, P, y, N, H * D, D, H, BD, BN)
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
        BD, HP, BN = _blocks(N, D, H)
        NB = triton.cdiv(N, BN)
        G_part = alloc(B, NB, H, D, like=w, dtype=torch.float32)
        _bwd_g_kernel[(B, NB)](w, gy, S, temp, A, P, G_part, N, C, D, H, BD, HP, BN)
        G = G_part.sum(1)
        gP = -(G * A).sum(-1) / (P + PI_EPS) ** 2                                   # [B, H]
        dw32 = alloc(B, N, C, like=w, dtype=torch.float32)
        gtemp_part = alloc(B, NB, HP, like=w, dtype=torch.float32)
        dS_part = alloc(B, NB, H, D, like=w, dtype=torch.float32)
        _bwd_dw_kernel[(B, NB)](w, gy, S, temp, A, P, G.contiguous(), gP.contiguous(), dw32, gtemp_part, dS_part,
                                N, C, D, H, BD, HP, BN)
        dS = torch.where(S > NORM_EPS_SQ, dS_part.sum(1), torch.zeros_like(S))
        dw = alloc(B, N, C, like=w)
        _bwd_s_kernel[(B * H, NB)](w, dw32, dS.contiguous(), dw, N, C, D, H, BD, BN)
        gtemp = gtemp_part.sum((0, 1))[:H].to(ctx.temp_dtype)
        return dw, gtemp, None


def triton_tssa(w: torch.Tensor, temp: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Fused TSSA. w: [B, N, C] (fp32/fp16/bf16), temp: [H] or [H, 1] -> y: [B, N, C] in w's dtype."""
    check_w(w, num_heads)
    t = check_temp(temp, num_heads)
    check_available(w, t)
    return TSSAFunction.apply(w, t, num_heads)
