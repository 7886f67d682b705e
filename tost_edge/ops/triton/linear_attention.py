"""Chunked causal linear attention (fla-style chunk mode) forward and backward, with initial and final state.

The kernels compute the plain recurrence o_i = q_i^T S_i, S_i = S_0 + sum_{j<=i} k_j v_j^T on feature-mapped
inputs; the Katharopoulos normaliser rides along as an extra value column of ones (its output is phi(q)^T z_i),
so the feature map elu+1 and the division stay ordinary torch ops with torch autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..linear_attention.state import LinearAttentionState, prepare
from .utils import alloc, check_available, next_pow2


@triton.jit
def _fwd(q, k, v, S0, o, S_T, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
         BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kk = tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    S = tl.load(S0 + bh * K * V + kk[:, None] * V + vv[None, :], mask=(kk[:, None] < K) & (vv[None, :] < V), other=0.0)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        tm = t < T
        qc = tl.load(q + ((b * T + t[:, None]) * H + h) * K + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        kc = tl.load(k + ((b * T + t[:, None]) * H + h) * K + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        vc = tl.load(v + ((b * T + t[:, None]) * H + h) * V + vv[None, :], mask=tm[:, None] & (vv[None, :] < V), other=0.0)
        A = tl.dot(qc, tl.trans(kc), input_precision=PREC)
        A = tl.where(t[:, None] >= t[None, :], A, 0.0)
        oc = tl.dot(A, vc, input_precision=PREC) + tl.dot(qc, S, input_precision=PREC)
        tl.store(o + ((b * T + t[:, None]) * H + h) * V + vv[None, :], oc, mask=tm[:, None] & (vv[None, :] < V))
        S += tl.dot(tl.trans(kc), vc, input_precision=PREC)
    tl.store(S_T + bh * K * V + kk[:, None] * V + vv[None, :], S, mask=(kk[:, None] < K) & (vv[None, :] < V))


@triton.jit
def _bwd_dq(k, v, do, S0, dq, B, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
            BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kk = tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    S = tl.load(S0 + bh * K * V + kk[:, None] * V + vv[None, :], mask=(kk[:, None] < K) & (vv[None, :] < V), other=0.0)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        tm = t < T
        kc = tl.load(k + ((b * T + t[:, None]) * H + h) * K + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        vc = tl.load(v + ((b * T + t[:, None]) * H + h) * V + vv[None, :], mask=tm[:, None] & (vv[None, :] < V), other=0.0)
        dc = tl.load(do + ((b * T + t[:, None]) * H + h) * V + vv[None, :], mask=tm[:, None] & (vv[None, :] < V), other=0.0)
        M = tl.dot(dc, tl.trans(vc), input_precision=PREC)                    # [i, j] = do_i . v_j
        M = tl.where(t[:, None] >= t[None, :], M, 0.0)
        dqc = tl.dot(M, kc, input_precision=PREC) + tl.dot(dc, tl.trans(S), input_precision=PREC)
        tl.store(dq + (((iv * B + b) * T + t[:, None]) * H + h) * K + kk[None, :], dqc, mask=tm[:, None] & (kk[None, :] < K))
        S += tl.dot(tl.trans(kc), vc, input_precision=PREC)


@triton.jit
def _bwd_dkv(q, k, v, do, gS_T, dk, dv, dS0, B, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
             BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    bh, iv = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    kk = tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    dS = tl.load(gS_T + bh * K * V + kk[:, None] * V + vv[None, :], mask=(kk[:, None] < K) & (vv[None, :] < V), other=0.0)
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        t = (NT - 1 - i) * BT + tl.arange(0, BT)
        tm = t < T
        qc = tl.load(q + ((b * T + t[:, None]) * H + h) * K + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        kc = tl.load(k + ((b * T + t[:, None]) * H + h) * K + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        vc = tl.load(v + ((b * T + t[:, None]) * H + h) * V + vv[None, :], mask=tm[:, None] & (vv[None, :] < V), other=0.0)
        dc = tl.load(do + ((b * T + t[:, None]) * H + h) * V + vv[None, :], mask=tm[:, None] & (vv[None, :] < V), other=0.0)
        causal = t[:, None] >= t[None, :]
        M = tl.where(causal, tl.dot(dc, tl.trans(vc), input_precision=PREC), 0.0)   # [i, j] = do_i . v_j
        N = tl.where(causal, tl.dot(qc, tl.trans(kc), input_precision=PREC), 0.0)   # [i, j] = q_i . k_j
        dkc = tl.dot(tl.trans(M), qc, input_precision=PREC) + tl.dot(vc, tl.trans(dS), input_precision=PREC)
        dvc = tl.dot(tl.trans(N), dc, input_precision=PREC) + tl.dot(kc, dS, input_precision=PREC)
        tl.store(dk + (((iv * B + b) * T + t[:, None]) * H + h) * K + kk[None, :], dkc, mask=tm[:, None] & (kk[None, :] < K))
        tl.store(dv + ((b * T + t[:, None]) * H + h) * V + vv[None, :], dvc, mask=tm[:, None] & (vv[None, :] < V))
        dS += tl.dot(tl.trans(qc), dc, input_precision=PREC)
    tl.store(dS0 + bh * K * V + kk[:, None] * V + vv[None, :], dS, mask=(kk[:, None] < K) & (vv[None, :] < V))


def _cfg(T, K, V):
    # value columns in blocks of BV (one program each) keep the state tile and the chunk tiles in registers
    BK, BV = max(16, next_pow2(K)), max(16, min(64, next_pow2(V)))
    BT = max(16, min(64 if BK <= 64 else 32, next_pow2(T)))
    return BK, BV, BT


class ChunkLinearAttention(torch.autograd.Function):
    """q, k: [B, T, H, K], v: [B, T, H, V], S0: [B, H, K, V] (fp32) -> o: [B, T, H, V], S_T: [B, H, K, V]."""

    @staticmethod
    def forward(ctx, q, k, v, S0):
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, BT = _cfg(T, K, V)
        o = alloc(B, T, H, V, like=q)
        S_T = alloc(B, H, K, V, like=q)
        _fwd[(B * H, triton.cdiv(V, BV))](q, k, v, S0, o, S_T, T, H, K, V, BK, BV, BT, "ieee")
        ctx.save_for_backward(q, k, v, S0)
        return o, S_T

    @staticmethod
    def backward(ctx, do, gS_T):
        q, k, v, S0 = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        BK, BV, BT = _cfg(T, K, V)
        do = torch.zeros_like(v) if do is None else do.contiguous()
        gS_T = torch.zeros_like(S0) if gS_T is None else gS_T.contiguous()
        NV = triton.cdiv(V, BV)
        # dq and dk sum over value columns: one partial per value block, added up below
        dq, dk = alloc(NV, B, T, H, K, like=q), alloc(NV, B, T, H, K, like=q)
        dv, dS0 = alloc(B, T, H, V, like=q), alloc(B, H, K, V, like=q)
        _bwd_dq[(B * H, NV)](k, v, do, S0, dq, B, T, H, K, V, BK, BV, BT, "ieee")
        _bwd_dkv[(B * H, NV)](q, k, v, do, gS_T, dk, dv, dS0, B, T, H, K, V, BK, BV, BT, "ieee")
        return dq.sum(0), dk.sum(0), dv, dS0


def triton_causal_linear_attention(q, k, v, state=None, eps: float = 1e-6):
    """Chunked causal linear attention; same contract as tost_edge.ops.causal_linear_attention."""
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    check_available(q, k, v)
    fq, fk = F.elu(q.float()) + 1.0, F.elu(k.float()) + 1.0
    v_aug = torch.cat([v.float(), torch.ones_like(v[..., :1], dtype=torch.float32)], -1)   # [B, T, H, M + 1]
    S0 = torch.cat([state.kv.float(), state.k_sum.float().unsqueeze(-1)], -1)              # [B, H, D, M + 1]
    o, S_T = ChunkLinearAttention.apply(fq.contiguous(), fk.contiguous(), v_aug.contiguous(), S0.contiguous())
    y = o[..., :M] / (o[..., M:] + eps)
    return y.to(q.dtype), LinearAttentionState(S_T[..., :M], S_T[..., M])
