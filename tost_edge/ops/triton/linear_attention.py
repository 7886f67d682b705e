"""Chunked causal linear attention (fla-style chunk mode), forward and backward, with initial and final state.

One program per (sequence, head) walks chunks of BT tokens, carrying the fp32 state S [K, V] and z [K] in registers.
Inside a chunk everything is a tensor-core dot in the input dtype (fp32 accumulation; IEEE fp32 for fp32 inputs):

    A   = causal(phi(q) phi(k)^T)                      [BT, BT]
    o   = A v + phi(q) S                               y = o / (rowsum(A) + phi(q) z + eps)
    S  += phi(k)^T v,  z += sum phi(k)

The state and the scores grow with the sequence (the state sums every token) and pass fp16's 65504 on long streams,
while the output gradient do = dy / den shrinks with it below fp16's normal range; so with fp16 inputs the dots that
take a state, the scores or do run as fp32 (TF32: fp16's 10-bit mantissa, fp32's range). bf16 has fp32's range.

The feature map phi = elu + 1 and the normaliser are fused: q, k, v are read raw, y is written once, and the
normaliser den [B, T, H] (fp32, 1/D of the activations) is kept for the backward pass, which recomputes phi and
rebuilds do = dy / (den + eps) and d den = -sum(dy * y) / (den + eps) on the fly.

q, k and v are read where they lie wherever each token's [H, D] is contiguous and the sequences are evenly spaced:
the views a language model unbinds from one [B, T, 3, H, D] projection cost no copy (their tokens lie 3 * H * D
elements apart; the strides are compile-time constants, so contiguous inputs compile to the same code as before).
Other layouts are copied first. Given the projection itself (triton_causal_linear_attention_qkvpacked), the backward
writes its gradient where it lies too (token stride RG), which unbound views cannot have: autograd stacks theirs.

PARALLEL runs linear_attention_chunks.py instead: walks that carry only the state, then a program per chunk.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..linear_attention.state import LinearAttentionState, prepare, unpack_qkv
from ..packing import device_offsets
from .utils import (MAX_OFFSET, alloc, batch_runs, cdiv, check_available, check_dtype, first_order, interpreting,
                    join_runs, launch_options, next_pow2, on_input_device)


@triton.jit
def _at(b, h, t, T, R, K: tl.constexpr, BK: tl.constexpr, c0=0):
    """Offsets and mask of a [BT, BK] tile from column c0 of a [B, T, H, K] tensor whose tokens lie R elements apart
    (H * K where contiguous; more for q, k, v taken from one [B, T, 3, H, K] projection without a copy)."""
    kk = c0 + tl.arange(0, BK)
    return (b * T + t[:, None]) * R + h * K + kk[None, :], (t[:, None] < T) & (kk[None, :] < K)


@triton.jit
def _rows(ptr, b, h, t, T, R, K: tl.constexpr, BK: tl.constexpr, c0=0):
    """The tile of _at(...) (fp32, zero outside), its offsets and mask."""
    off, m = _at(b, h, t, T, R, K, BK, c0)
    return tl.load(ptr + off, mask=m, other=0.0).to(tl.float32), off, m


@triton.jit
def _phi(x, m):
    """elu(x) + 1 and its derivative, zero where masked (padded tokens must add nothing to the state)."""
    f = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    return tl.where(m, f, 0.0), tl.where(m, tl.where(x > 0, 1.0, f), 0.0)


@triton.jit
def _sequence(cu, b):
    """Packed sequences (VARLEN, cu_seqlens): the first token row of sequence b, its length, and the sequence index
    its token rows are then addressed with (0: the caller offsets its token pointers by that row)."""
    r0 = tl.load(cu + b)
    return r0, tl.load(cu + b + 1) - r0, b * 0


@triton.jit
def _state_at(bh, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, k0=0, v0=0):
    """Offsets and masks of (sequence, head) bh's S [K, V] in a [B, H, K, V] buffer and z [K] in a [B, H, K] one: the
    block of BK rows from k0 and BV columns from v0 (z: its BK entries from k0)."""
    kk = k0 + tl.arange(0, BK)
    vv = v0 + tl.arange(0, BV)[None, :]
    return bh * K * V + kk[:, None] * V + vv, (kk[:, None] < K) & (vv < V), bh * K + kk, kk < K


@triton.jit
def _load_state(S_ptr, z_ptr, bh, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, k0=0, v0=0):
    so, sm, zo, zm = _state_at(bh, K, V, BK, BV, k0, v0)
    return tl.load(S_ptr + so, mask=sm, other=0.0), tl.load(z_ptr + zo, mask=zm, other=0.0)


@triton.jit
def _store_state(S_ptr, z_ptr, S, z, bh, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, k0=0,
                 v0=0, with_z=True):
    so, sm, zo, zm = _state_at(bh, K, V, BK, BV, k0, v0)
    tl.store(S_ptr + so, S, mask=sm)
    if with_z:
        tl.store(z_ptr + zo, z, mask=zm)


@triton.jit
def _fwd(q, k, v, S0, z0, y, den, S_T, z_T, T, RQK: tl.constexpr, RV: tl.constexpr, eps, H: tl.constexpr,
         K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
         SPLIT: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    # SPLIT: program (bh, j) takes the BV value columns from j * BV (every program computes the normaliser; the
    # first stores it). VARLEN: sequence b's tokens start at row cu[b] (packed sequences); the state is still bh's
    bh = tl.program_id(0)
    if SPLIT:
        v0 = tl.program_id(1) * BV
        first = tl.program_id(1) == 0
    else:
        v0 = 0
        first = True
    b, h = bh // H, bh % H
    if VARLEN:
        r0, T, b = _sequence(cu, b)
        q, k, v, y, den = q + r0 * RQK, k + r0 * RQK, v + r0 * RV, y + r0 * (H * V), den + r0 * H
    S, z = _load_state(S0, z0, bh, K, V, BK, BV, 0, v0)                     # [BK, BV], [BK] fp32
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        fk_d, v_d, fk = _out_chunk(q, k, v, y, den, S, z, b, h, t, T, RQK, RV, eps, H, K, V, BK, BV, PREC, v0,
                                   first)
        S += tl.dot(tl.trans(fk_d), v_d, input_precision=PREC)
        z += tl.sum(fk, 0)
    _store_state(S_T, z_T, S, z, bh, K, V, BK, BV, 0, v0, first)


@triton.jit
def _out_chunk(q, k, v, y, den, S, z, b, h, t, T, RQK: tl.constexpr, RV: tl.constexpr, eps, H: tl.constexpr,
               K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, v0, first):
    """y of the chunk of tokens t (the BV value columns from v0) from the state S, z at its start, and its
    normaliser (stored where `first`). Returns phi(k) in the input dtype, v, and phi(k) in fp32 for the state."""
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see the module docstring
    qr, _, qm = _rows(q, b, h, t, T, RQK, K, BK)
    kr, _, _ = _rows(k, b, h, t, T, RQK, K, BK)
    vc, _, vm = _rows(v, b, h, t, T, RV, V, BV, v0)
    yo, _ = _at(b, h, t, T, H * V, V, BV, v0)
    fq, _ = _phi(qr, qm)
    fk, _ = _phi(kr, qm)
    fq_d, fk_d, v_d = fq.to(dt), fk.to(dt), vc.to(dt)
    A = tl.dot(fq_d, tl.trans(fk_d), input_precision=PREC)              # [BT, BT]
    A = tl.where(t[:, None] >= t[None, :], A, 0.0)
    o = tl.dot(A.to(wt), vc.to(wt), input_precision=PREC) + tl.dot(fq.to(wt), S.to(wt), input_precision=PREC)
    dn = tl.sum(A, 1) + tl.sum(fq * z[None, :], 1)                       # [BT]
    tl.store(y + yo, (o / (dn + eps)[:, None]).to(dt), mask=vm)
    if first:
        tl.store(den + (b * T + t) * H + h, dn, mask=t < T)
    return fk_d, v_d, fk


@triton.jit
def _grad_o(dy, den, b, h, t, T, eps, H: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, v0):
    """do = dy / (den + eps) for the BV value columns from v0 [BT, BV], zero outside."""
    g, _, _ = _rows(dy, b, h, t, T, H * V, V, BV, v0)
    r = 1.0 / (tl.load(den + (b * T + t) * H + h, mask=t < T, other=0.0) + eps)    # one division per token
    return g * r[:, None]


@triton.jit
def _grad_out(dy, y, den, b, h, t, T, eps, H: tl.constexpr, V: tl.constexpr, BV: tl.constexpr):
    """do = dy / (den + eps) [BT, BV] and d den = -sum(dy * y) / (den + eps) = -sum(do * y) [BT], zero outside."""
    do = _grad_o(dy, den, b, h, t, T, eps, H, V, BV, 0)
    yv, _, _ = _rows(y, b, h, t, T, H * V, V, BV)
    return do, -tl.sum(do * yv, 1)


@triton.jit
def _bwd_chunk(q, k, v, dy, y, den, b, h, t, T, RQK: tl.constexpr, RV: tl.constexpr, RG: tl.constexpr, eps,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, k0):
    """What every backward kernel reads of a chunk: q and k's BK columns from k0 (raw, fp32), the offsets and mask of
    those columns in d q and d k, v's columns and their offsets and mask in d v, do and d den (all V columns). The
    gradients are contiguous [B, T, H, K] tensors (RG 0) or, for a packed qkv, views of one [B, T, 3, H, K] gradient
    whose tokens lie RG elements apart: the projection's gradient is written where it lies, with no stacking copy."""
    qr, _, qm = _rows(q, b, h, t, T, RQK, K, BK, k0)
    kr, _, _ = _rows(k, b, h, t, T, RQK, K, BK, k0)
    vc, _, vm = _rows(v, b, h, t, T, RV, V, BV)
    qo, _ = _at(b, h, t, T, H * K if RG == 0 else RG, K, BK, k0)
    vo, _ = _at(b, h, t, T, H * V if RG == 0 else RG, V, BV)
    do, dd = _grad_out(dy, y, den, b, h, t, T, eps, H, V, BV)
    return qr, kr, qo, qm, vc, vo, vm, do, dd


@triton.jit
def _bwd_dq(q, k, v, dy, y, den, S0, z0, dq, T, RQK: tl.constexpr, RV: tl.constexpr, RG: tl.constexpr, eps,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
            PREC: tl.constexpr, SPLIT: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    # d phi(q)_i = sum_{j<=i} (do_i . v_j + dden_i) phi(k)_j + S_i0 do_i + dden_i z_i0  (S_i0, z_i0: chunk start)
    # SPLIT: program (bh, j) takes the BK key columns from j * BK
    bh = tl.program_id(0)
    if SPLIT:
        k0 = tl.program_id(1) * BK
    else:
        k0 = 0
    b, h = bh // H, bh % H
    if VARLEN:     # as in _fwd
        r0, T, b = _sequence(cu, b)
        q, k, v, dy, y, den = q + r0 * RQK, k + r0 * RQK, v + r0 * RV, dy + r0 * (H * V), y + r0 * (H * V), den + r0 * H
        dq += r0 * (H * K if RG == 0 else RG)
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see the module docstring
    S, z = _load_state(S0, z0, bh, K, V, BK, BV, k0, 0)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        qr, kr, qo, qm, vc, _, _, do, dd = _bwd_chunk(q, k, v, dy, y, den, b, h, t, T, RQK, RV, RG, eps, H, K, V, BK,
                                                      BV, k0)
        _, dphi = _phi(qr, qm)
        fk, _ = _phi(kr, qm)
        fk_d, v_d, do_d = fk.to(wt), vc.to(wt), do.to(wt)
        M = tl.dot(do_d, tl.trans(v_d), input_precision=PREC) + dd[:, None]  # [i, j]
        M = tl.where((t[:, None] >= t[None, :]) & (t[None, :] < T), M, 0.0)
        dfq = tl.dot(M.to(wt), fk_d, input_precision=PREC) \
            + tl.dot(do.to(wt), tl.trans(S.to(wt)), input_precision=PREC)
        dfq += dd[:, None] * z[None, :]
        tl.store(dq + qo, (dfq * dphi).to(dq.dtype.element_ty), mask=qm)
        S += tl.dot(tl.trans(fk_d), v_d, input_precision=PREC)
        z += tl.sum(fk, 0)


@triton.jit
def _bwd_dkv(q, k, v, dy, y, den, gS_T, gz_T, dk, dv, dS0, dz0, T, RQK: tl.constexpr, RV: tl.constexpr,
             RG: tl.constexpr, eps, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
             BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    # walking chunks backwards, dS / dz hold the gradient flowing into the state after the current chunk
    bh = tl.program_id(0)
    b, h = bh // H, bh % H
    if VARLEN:     # as in _fwd
        r0, T, b = _sequence(cu, b)
        q, k, v, dy, y, den = q + r0 * RQK, k + r0 * RQK, v + r0 * RV, dy + r0 * (H * V), y + r0 * (H * V), den + r0 * H
        dk, dv = dk + r0 * (H * K if RG == 0 else RG), dv + r0 * (H * V if RG == 0 else RG)
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see the module docstring
    dS, dz = _load_state(gS_T, gz_T, bh, K, V, BK, BV)
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        t = (NT - 1 - i) * BT + tl.arange(0, BT)
        qr, kr, ko, qm, vc, vo, vm, do, dd = _bwd_chunk(q, k, v, dy, y, den, b, h, t, T, RQK, RV, RG, eps, H, K, V, BK,
                                                        BV, 0)
        fq, _ = _phi(qr, qm)
        fk, dphi = _phi(kr, qm)
        fq_d, fk_d, v_d, do_d = fq.to(wt), fk.to(wt), vc.to(wt), do.to(wt)
        causal = (t[:, None] >= t[None, :]) & (t[:, None] < T)
        M = tl.where(causal, tl.dot(do_d, tl.trans(v_d), input_precision=PREC) + dd[:, None], 0.0)  # [i, j]
        A = tl.where(causal, tl.dot(fq_d, tl.trans(fk_d), input_precision=PREC), 0.0)               # [i, j]
        dfk = tl.dot(tl.trans(M.to(wt)), fq_d, input_precision=PREC) \
            + tl.dot(vc.to(wt), tl.trans(dS.to(wt)), input_precision=PREC) + dz[None, :]
        dvc = tl.dot(tl.trans(A.to(wt)), do.to(wt), input_precision=PREC) \
            + tl.dot(fk.to(wt), dS.to(wt), input_precision=PREC)
        tl.store(dk + ko, (dfk * dphi).to(dk.dtype.element_ty), mask=qm)
        tl.store(dv + vo, dvc.to(dv.dtype.element_ty), mask=vm)
        dS += tl.dot(tl.trans(fq_d), do_d, input_precision=PREC)
        dz += tl.sum(fq * dd[:, None], 0)
    _store_state(dS0, dz0, dS, dz, bh, K, V, BK, BV)


@triton.jit
def _bwd_dk(q, k, v, dy, y, den, gS_T, gz_T, dk, dS0, dz0, T, RQK: tl.constexpr, RV: tl.constexpr, RG: tl.constexpr,
            eps, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            BT: tl.constexpr, PREC: tl.constexpr, cu=None, VARLEN: tl.constexpr = False):
    # _bwd_dkv's key half for the BK key columns from program_id(1) * BK (SPLIT > 1); also the initial state's
    # gradient rows of those columns
    bh, k0 = tl.program_id(0), tl.program_id(1) * BK
    b, h = bh // H, bh % H
    if VARLEN:     # as in _fwd
        r0, T, b = _sequence(cu, b)
        q, k, v, dy, y, den = q + r0 * RQK, k + r0 * RQK, v + r0 * RV, dy + r0 * (H * V), y + r0 * (H * V), den + r0 * H
        dk += r0 * (H * K if RG == 0 else RG)
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see the module docstring
    dS, dz = _load_state(gS_T, gz_T, bh, K, V, BK, BV, k0, 0)     # [BK, BV] rows k0.., [BK]
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        t = (NT - 1 - i) * BT + tl.arange(0, BT)
        qr, kr, ko, qm, vc, _, _, do, dd = _bwd_chunk(q, k, v, dy, y, den, b, h, t, T, RQK, RV, RG, eps, H, K, V, BK,
                                                      BV, k0)
        fq, _ = _phi(qr, qm)
        _, dphi = _phi(kr, qm)
        fq_d, do_d = fq.to(wt), do.to(wt)
        causal = (t[:, None] >= t[None, :]) & (t[:, None] < T)
        M = tl.where(causal, tl.dot(do_d, tl.trans(vc.to(wt)), input_precision=PREC) + dd[:, None], 0.0)  # [i, j]
        dfk = tl.dot(tl.trans(M.to(wt)), fq_d, input_precision=PREC) \
            + tl.dot(vc.to(wt), tl.trans(dS.to(wt)), input_precision=PREC) + dz[None, :]
        tl.store(dk + ko, (dfk * dphi).to(dk.dtype.element_ty), mask=qm)
        dS += tl.dot(tl.trans(fq_d), do_d, input_precision=PREC)
        dz += tl.sum(fq * dd[:, None], 0)
    _store_state(dS0, dz0, dS, dz, bh, K, V, BK, BV, k0, 0)


@triton.jit
def _bwd_dv(q, k, v, dy, den, gS_T, dv, T, RQK: tl.constexpr, RV: tl.constexpr, RG: tl.constexpr, eps, H: tl.constexpr,
            K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
            cu=None, VARLEN: tl.constexpr = False):
    # _bwd_dkv's value half for the BV value columns from program_id(1) * BV (SPLIT > 1)
    bh, v0 = tl.program_id(0), tl.program_id(1) * BV
    b, h = bh // H, bh % H
    if VARLEN:     # as in _fwd
        r0, T, b = _sequence(cu, b)
        q, k, v, dy, den = q + r0 * RQK, k + r0 * RQK, v + r0 * RV, dy + r0 * (H * V), den + r0 * H
        dv += r0 * (H * V if RG == 0 else RG)
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see the module docstring
    so, sm, zo, zm = _state_at(bh, K, V, BK, BV, 0, v0)        # (z has no gradient here)
    dS = tl.load(gS_T + so, mask=sm, other=0.0)                   # [BK, BV] columns v0..
    NT = tl.cdiv(T, BT)
    for i in range(0, NT):
        t = (NT - 1 - i) * BT + tl.arange(0, BT)
        qr, _, qm = _rows(q, b, h, t, T, RQK, K, BK)
        kr, _, _ = _rows(k, b, h, t, T, RQK, K, BK)
        do = _grad_o(dy, den, b, h, t, T, eps, H, V, BV, v0)
        vo, vm = _at(b, h, t, T, H * V if RG == 0 else RG, V, BV, v0)
        fq, _ = _phi(qr, qm)
        fk, _ = _phi(kr, qm)
        fq_d, do_d = fq.to(wt), do.to(wt)
        causal = (t[:, None] >= t[None, :]) & (t[:, None] < T)
        A = tl.where(causal, tl.dot(fq_d, tl.trans(fk.to(wt)), input_precision=PREC), 0.0)               # [i, j]
        dvc = tl.dot(tl.trans(A.to(wt)), do_d, input_precision=PREC) \
            + tl.dot(fk.to(wt), dS.to(wt), input_precision=PREC)
        tl.store(dv + vo, dvc.to(dv.dtype.element_ty), mask=vm)
        dS += tl.dot(tl.trans(fq_d), do_d, input_precision=PREC)


CHUNK: int | None = None   # tokens per chunk (None: 64, or 32 for head sizes over 64)
WARPS = 8      # warps per program (4 spill the [BT, BT] and state tiles at head size 64)
SPLIT = 1      # programs per (sequence, head): the forward and dv split the value columns, dq and dk the key columns
               # (blocks of at least 16); B8 H12 is 96 programs for 132 SMs at SPLIT = 1 (H100: 2 and 4 slower)
PARALLEL = False  # chunks in parallel (linear_attention_chunks.py, fla's chunk mode): walks carry only the state, then
                  # one program per (sequence, head, chunk) does the dots; fp32 states of every chunk in memory (the
                  # backward: twice q's bf16 size, two buffers). SPLIT does not apply. Not yet timed on a GPU
PARALLEL_BWD_SPLIT: bool | None = None  # PARALLEL's backward chunks in two kernels (d q; d k, d v) or one;
                                       # None: two where they spill less than the one (chunks._split)


def _plan(K: int, V: int) -> list:
    """[BK, BV, BT, warps, nk, nv, parallel, parallel backward split (-1: decided by spills)]: the blocks, chunk, warps,
    splits and scheme both directions of one call run with."""
    BK, BV = max(16, next_pow2(K)), max(16, next_pow2(V))
    BT = CHUNK or (64 if max(BK, BV) <= 64 else 32)   # the [BT, BT] and [BK, BV] tiles stay in registers
    nk, nv = max(1, min(SPLIT, BK // 16)), max(1, min(SPLIT, BV // 16))   # powers of two, like BK and BV
    if PARALLEL:
        nk = nv = 1
    split = -1 if PARALLEL_BWD_SPLIT is None else int(PARALLEL_BWD_SPLIT)
    return [BK, BV, BT, WARPS, nk, nv, int(PARALLEL), split]


def _row_stride(x: Tensor) -> int | None:
    """Elements between consecutive tokens of x [B, T, H, D] where the kernels can address it as it lies (each
    token's [H, D] contiguous, the batch's sequences T tokens apart: e.g. q, k, v unbound from one [B, T, 3, H, D]
    projection), else None."""
    B, T, H, D = x.shape
    R = x.stride(1) if T > 1 else x.stride(0) if B > 1 else H * D
    return R if all(n == 1 or s == want for n, s, want in zip(x.shape, x.stride(), (T * R, R, D, 1))) else None


def _token_strides(q, k, v):
    """(q, k, v, RQK, RV): the inputs as the kernels read them, copied only where their layout needs it (q and k
    share one token stride), and the elements between their tokens."""
    if q.is_contiguous() and k.is_contiguous() and v.is_contiguous():
        return q, k, v, q.shape[2] * q.shape[3], v.shape[2] * v.shape[3]
    rqk, rv = _row_stride(q), _row_stride(v)
    if rqk is None or _row_stride(k) != rqk:
        q, k = q.contiguous(), k.contiguous()
        rqk = q.shape[2] * q.shape[3]
    if rv is None:
        v = v.contiguous()
        rv = v.shape[2] * v.shape[3]
    return q, k, v, rqk, rv


@on_input_device
def _forward(q, k, v, S0, z0, eps: float, plan: list, cu=None):
    """q, k: [B, T, H, K] raw (phi applied inside), v: [B, T, H, V], S0: [B, H, K, V], z0: [B, H, K] (fp32)
    -> y: [B, T, H, V] in v's dtype, S_T, z_T (fp32), den: [B, T, H] (fp32, for the backward).
    cu: packed sequences (int32 [N + 1]): q, k, v are [1, total, H, K] and the states [N, ...]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, BT, warps, nk, nv, parallel, _ = plan
    q, k, v, RQK, RV = _token_strides(q, k, v)
    y = alloc(B, T, H, V, like=v)
    den = alloc(B, T, H, like=v, dtype=torch.float32)
    S_T, z_T = alloc(*S0.shape, like=S0), alloc(*z0.shape, like=z0)
    if parallel:
        from . import linear_attention_chunks as chunks
        chunks.forward(q, k, v, S0, z0, y, den, S_T, z_T, RQK, RV, eps, BK, BV, BT, warps, _prec(q.dtype))
        return y, S_T, z_T, den
    _fwd[(S0.shape[0] * H, nv)](q, k, v, S0, z0, y, den, S_T, z_T, T, RQK, RV, eps, H, K, V, BK, BV // nv, BT,
                                _prec(q.dtype), nv > 1, **_varlen(cu, warps))
    return y, S_T, z_T, den


@on_input_device
def _backward(dy, gS_T, gz_T, q, k, v, S0, z0, y, den, eps: float, plan: list, cu=None):
    """Gradients of q, k, v, S0 and z0 (dy: [B, T, H, V]; gS_T, gz_T fp32; cu: as _forward's)."""
    B, T, H, K = q.shape
    dq, dk, dv = alloc(B, T, H, K, like=q), alloc(B, T, H, K, like=k), alloc(B, T, H, v.shape[-1], like=v)
    return (dq, dk, dv, *_backward_into(dq, dk, dv, 0, dy, gS_T, gz_T, q, k, v, S0, z0, y, den, eps, plan, cu))


def _forward_packed(qkv, S0, z0, eps: float, plan: list, cu=None):
    """_forward of q, k, v unbound from qkv [B, T, 3, H, D] (read where they lie)."""
    return _forward(*qkv.unbind(2), S0, z0, eps, plan, cu)


@on_input_device
def _backward_packed(dy, gS_T, gz_T, qkv, S0, z0, y, den, eps: float, plan: list, cu=None):
    """Gradients of qkv [B, T, 3, H, D] (one tensor, its d q, d k, d v written where they lie: unbinding qkv before
    the op would have autograd stack three separate gradients into it, a copy of all three), S0 and z0."""
    B, T, _, H, D = qkv.shape
    dqkv = alloc(B, T, 3, H, D, like=qkv)
    return (dqkv, *_backward_into(*dqkv.unbind(2), 3 * H * D, dy, gS_T, gz_T, *qkv.unbind(2), S0, z0, y, den, eps,
                                  plan, cu))


def _backward_into(dq, dk, dv, RG: int, dy, gS_T, gz_T, q, k, v, S0, z0, y, den, eps: float, plan: list, cu=None):
    """Fills dq, dk, dv (contiguous, RG 0, or views of one gradient whose tokens lie RG elements apart); returns the
    gradients of S0 and z0. cu: packed sequences, as _forward's (the walking kernels, one program a sequence)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, BT, warps, nk, nv, parallel, split = plan
    prec = _prec(q.dtype)
    q, k, v, RQK, RV = _token_strides(q, k, v)
    dS0, dz0 = alloc(*S0.shape, like=S0), alloc(*z0.shape, like=z0)
    B = S0.shape[0]                                                    # (packed: the number of sequences)
    if parallel:
        from . import linear_attention_chunks as chunks
        chunks.backward(dy, gS_T, gz_T, q, k, v, S0, z0, y, den, dq, dk, dv, dS0, dz0, RQK, RV, RG, eps, BK, BV, BT,
                        warps, prec, None if split < 0 else bool(split))
        return dS0, dz0
    opts = _varlen(cu, warps)
    _bwd_dq[(B * H, nk)](q, k, v, dy, y, den, S0, z0, dq, T, RQK, RV, RG, eps, H, K, V, BK // nk, BV, BT, prec, nk > 1,
                         **opts)
    if nk == 1 and nv == 1:
        _bwd_dkv[(B * H,)](q, k, v, dy, y, den, gS_T, gz_T, dk, dv, dS0, dz0, T, RQK, RV, RG, eps, H, K, V, BK, BV, BT,
                           prec, **opts)
    else:
        _bwd_dk[(B * H, nk)](q, k, v, dy, y, den, gS_T, gz_T, dk, dS0, dz0, T, RQK, RV, RG, eps, H, K, V, BK // nk, BV,
                             BT, prec, **opts)
        _bwd_dv[(B * H, nv)](q, k, v, dy, den, gS_T, dv, T, RQK, RV, RG, eps, H, K, V, BK, BV // nv, BT, prec, **opts)
    return dS0, dz0


def _varlen(cu, warps: int) -> dict:
    """The walking kernels' launch options: packed sequences' offsets where cu is given (one program a sequence)."""
    return launch_options(warps) if cu is None else dict(cu=cu, VARLEN=True, **launch_options(warps))


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _grads_in(dy, gS_T, gz_T, y, S0, z0):
    """The incoming gradients with those of unused outputs as zeros, contiguous, the state's in fp32 (the absent
    state gradients: views of one zero-filled buffer, one fill)."""
    absent = [t.numel() if g is None else 0 for g, t in ((gS_T, S0), (gz_T, z0))]
    zS, zz = S0.new_zeros(sum(absent), dtype=torch.float32).split(absent) if None in (gS_T, gz_T) else (None, None)
    return (torch.zeros_like(y) if dy is None else dy.contiguous(),
            zS.view(S0.shape) if gS_T is None else gS_T.float().contiguous(),
            zz.view(z0.shape) if gz_T is None else gz_T.float().contiguous())


# the directions by the op's tensor inputs: (q, k, v, S0, z0), or (qkv, S0, z0) packed
_FORWARD = {5: _forward, 3: _forward_packed}
_BACKWARD = {5: _backward, 3: _backward_packed}


class ChunkLinearAttention(torch.autograd.Function):
    """Eager autograd over the directions above (under torch.compile the custom ops below run instead). Takes
    (q, k, v, S0, z0, eps, plan, cu) or (qkv, S0, z0, eps, plan, cu); cu: packed sequences' offsets or None."""

    @staticmethod
    def forward(ctx, *args):
        ctx.set_materialize_grads(False)    # an unused output's gradient stays None: no zero-filled tensor
        *inputs, eps, plan, cu = args
        y, S_T, z_T, den = _FORWARD[len(inputs)](*inputs, eps, plan, cu)
        ctx.save_for_backward(*inputs, y, den)
        ctx.eps, ctx.plan, ctx.cu = eps, plan, cu
        return y, S_T, z_T

    @staticmethod
    def backward(ctx, dy, gS_T, gz_T):
        *inputs, y, den = ctx.saved_tensors
        grads = _BACKWARD[len(inputs)](*_grads_in(dy, gS_T, gz_T, y, *inputs[-2:]), *inputs, y, den, ctx.eps,
                                       ctx.plan, ctx.cu)
        return (*first_order("causal_linear_attention", grads, tuple(inputs)), None, None, None)


# (cu: packed sequences' int32 offsets [N + 1], or None; the states are then [N, ...])
@torch.library.custom_op("tost_edge::causal_linear_attention_triton_forward", mutates_args=())
def _forward_op(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, z0: Tensor, eps: float, plan: List[int],
                cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward(q, k, v, S0, z0, eps, plan, cu)


@_forward_op.register_fake
def _(q, k, v, S0, z0, eps, plan, cu):
    B, T, H, _ = q.shape
    return (v.new_empty(B, T, H, v.shape[-1]), torch.empty_like(S0), torch.empty_like(z0),
            v.new_empty(B, T, H, dtype=torch.float32))


@torch.library.custom_op("tost_edge::causal_linear_attention_triton_backward", mutates_args=())
def _backward_op(dy: Tensor, gS_T: Tensor, gz_T: Tensor, q: Tensor, k: Tensor, v: Tensor, S0: Tensor, z0: Tensor,
                 y: Tensor, den: Tensor, eps: float, plan: List[int],
                 cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _backward(dy, gS_T, gz_T, q, k, v, S0, z0, y, den, eps, plan, cu)


@_backward_op.register_fake
def _(dy, gS_T, gz_T, q, k, v, S0, z0, y, den, eps, plan, cu):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(S0), torch.empty_like(z0)


@torch.library.custom_op("tost_edge::causal_linear_attention_qkvpacked_triton_forward", mutates_args=())
def _forward_packed_op(qkv: Tensor, S0: Tensor, z0: Tensor, eps: float, plan: List[int],
                       cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_packed(qkv, S0, z0, eps, plan, cu)


@_forward_packed_op.register_fake
def _(qkv, S0, z0, eps, plan, cu):
    B, T, _, H, D = qkv.shape
    return (qkv.new_empty(B, T, H, D), torch.empty_like(S0), torch.empty_like(z0),
            qkv.new_empty(B, T, H, dtype=torch.float32))


@torch.library.custom_op("tost_edge::causal_linear_attention_qkvpacked_triton_backward", mutates_args=())
def _backward_packed_op(dy: Tensor, gS_T: Tensor, gz_T: Tensor, qkv: Tensor, S0: Tensor, z0: Tensor, y: Tensor,
                        den: Tensor, eps: float, plan: List[int],
                        cu: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_packed(dy, gS_T, gz_T, qkv, S0, z0, y, den, eps, plan, cu)


@_backward_packed_op.register_fake
def _(dy, gS_T, gz_T, qkv, S0, z0, y, den, eps, plan, cu):
    return qkv.new_empty(qkv.shape), torch.empty_like(S0), torch.empty_like(z0)


_BACKWARD_OP = {5: _backward_op, 3: _backward_packed_op}


def _setup_context(ctx, inputs, output):
    *tensors, eps, plan, cu = inputs
    y, _, _, den = output
    ctx.save_for_backward(*tensors, y, den, cu)
    ctx.eps, ctx.plan = eps, plan
    ctx.mark_non_differentiable(den)
    ctx.set_materialize_grads(False)


def _op_backward(ctx, dy, gS_T, gz_T, _gden):
    *inputs, y, den, cu = ctx.saved_tensors
    grads = _BACKWARD_OP[len(inputs)](*_grads_in(dy, gS_T, gz_T, y, *inputs[-2:]), *inputs, y, den, ctx.eps, ctx.plan,
                                      cu)
    return (*grads, None, None, None)


_forward_op.register_autograd(_op_backward, setup_context=_setup_context)
_forward_packed_op.register_autograd(_op_backward, setup_context=_setup_context)


def _bf16_interpreted(q, k, v, state, eps, cu=None):
    """bf16 under TRITON_INTERPRET=1: Triton's interpreter has no bf16 dot (it multiplies the raw bit patterns:
    triton-lang/triton#11584, declined upstream), so the kernels run in fp32 on the bf16-rounded inputs and the output
    is rounded back to bf16: what a GPU computes, up to where its bf16 dots round. (Python's warning filters show the
    warning once per call site.)"""
    warnings.warn("causal_linear_attention with backend='triton' under TRITON_INTERPRET=1: Triton's interpreter has no "
                  "bfloat16 dot, so bf16 inputs run the kernels in float32 there (a GPU runs them in bf16)",
                  stacklevel=3)
    q, k, v = q.float(), k.to(q.dtype).float(), v.to(q.dtype).float()
    if cu is None:
        y, st = triton_causal_linear_attention(q, k, v, state, eps)
    else:
        y, st = triton_causal_linear_attention_packed(q, k, v, cu, state, eps)
    return y.to(torch.bfloat16), st


def triton_causal_linear_attention(q, k, v, state=None, eps: float = 1e-6):
    """Chunked causal linear attention; same contract as tost_edge.ops.causal_linear_attention.

    q, k: [B, T, H, D], v: [B, T, H, M] (fp32/fp16/bf16, one dtype); state fp32 -> y [B, T, H, M] in q's dtype.
    """
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    check_dtype("q", q)
    check_available(q, k, v)
    if q.dtype == torch.bfloat16 and interpreting():
        return _bf16_interpreted(q, k, v, state, eps)
    if T == 0:
        # (empty, but on the graph: a loss over it differentiates to empty gradients, as for a longer sequence)
        return v.clone().to(q.dtype), LinearAttentionState(state.kv.float(), state.k_sum.float())
    plan = _plan(D, M)
    rows = 0 if q.is_contiguous() and v.is_contiguous() else max(_row_stride(x) or 0 for x in (q, k, v))
    runs = _runs(B, T, H, D, M, rows, plan)
    if len(runs) > 1:
        return join_runs([triton_causal_linear_attention(q[r], k[r], v[r], LinearAttentionState(*(s[r] for s in state)),
                                                         eps) for r in runs])
    dt = q.dtype
    return _apply(_forward_op, q, k.to(dt), v.to(dt), state.kv.float().contiguous(), state.k_sum.float().contiguous(),
                  float(eps), plan)


def triton_causal_linear_attention_qkvpacked(qkv, state=None, eps: float = 1e-6, cu: list | None = None):
    """triton_causal_linear_attention of q, k, v = qkv.unbind(2), qkv: [B, T, 3, H, D] (a model's one projection):
    the same outputs, and qkv's gradient comes back as one tensor that the kernels write where it lies, where unbinding
    first would have autograd stack the three gradients into it (a copy of all three). cu: packed sequences (checked
    host offsets; qkv [1, total, 3, H, D]), as triton_causal_linear_attention_packed."""
    qkv = qkv.contiguous()
    q, k, v = unpack_qkv(qkv)
    if cu is not None:
        return _packed_call(_forward_packed_op, (qkv,), q, k, v, cu, state, eps)
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    check_dtype("qkv", qkv)
    check_available(qkv)
    plan = _plan(D, M)
    if (qkv.dtype == torch.bfloat16 and interpreting()) or T == 0 or len(_runs(B, T, H, D, M, 3 * H * D, plan)) > 1:
        return triton_causal_linear_attention(q, k, v, state, eps)    # (the same results, from the unbound views)
    return _apply(_forward_packed_op, qkv, state.kv.float().contiguous(), state.k_sum.float().contiguous(),
                  float(eps), plan)


def triton_causal_linear_attention_packed(q, k, v, cu: list, state=None, eps: float = 1e-6):
    """Causal linear attention of packed sequences (the contract of tost_edge.ops.causal_linear_attention with
    cu_seqlens): q, k [1, total, H, D], v [1, total, H, M], sequence b its tokens [cu[b], cu[b + 1]) (cu: checked host
    ints, or under torch.compile a tensor checked on the device), each from its own state (kv [N, H, D, M], k_sum
    [N, H, D]). One launch a kernel walks every sequence: a
    program per (sequence, head), its token pointers offset to the sequence's first row (the chunks-in-parallel
    scheme, PARALLEL, does not apply)."""
    return _packed_call(_forward_op, (), q, k, v, cu, state, eps)


def _packed_call(op, qkv: tuple, q, k, v, cu, state, eps: float):
    """The packed forms' checks and launch: op's inputs are qkv (the projection, or none: q, k, v) and the state.
    cu: host ints, or a tensor of offsets (under torch.compile: its values are not read on the host)."""
    N = (cu.shape[0] if isinstance(cu, Tensor) else len(cu)) - 1
    _, total, H, D, M, _, state = prepare(q, k, v, state, batch=N)
    check_dtype("qkv" if qkv else "q", q)
    check_available(q, k, v)
    if q.dtype == torch.bfloat16 and interpreting():
        return _bf16_interpreted(q, k, v, state, eps, cu)
    rows = max(H * max(D, M), *(_row_stride(x) or 0 for x in (q, k, v)))   # (copied where None: H * D)
    if total * rows > MAX_OFFSET:
        raise ValueError(f"backend='triton': the packed sequences span {total * rows:,} elements of "
                         f"{'qkv' if qkv else 'q, k, v'}, more than the kernels' 32-bit offsets address "
                         f"({MAX_OFFSET:,}): pack fewer tokens a call")
    if total == 0:
        return v.to(q.dtype).clone(), LinearAttentionState(state.kv.float(), state.k_sum.float())
    plan = _plan(D, M)
    plan[6] = 0                                        # (the walking kernels: PARALLEL's chunks are not packed)
    cu_t = cu.to(q.device, torch.int32) if isinstance(cu, Tensor) else \
        device_offsets(cu, q.device)
    inputs = qkv or (q, k.to(q.dtype), v.to(q.dtype))
    return _apply(op, *inputs, state.kv.float().contiguous(), state.k_sum.float().contiguous(), float(eps), plan,
                  cu=cu_t)


def _runs(B: int, T: int, H: int, D: int, M: int, rows: int, plan: list) -> list:
    """utils.batch_runs for q, k, v whose tokens lie `rows` elements apart (0: contiguous)."""
    per_element, name = T * max(H * max(D, M), rows), "q, k, v"      # (q, k, v are read where they lie: see above)
    if plan[6] and H * cdiv(T, plan[2]) * D * M > per_element:    # PARALLEL: the states of every chunk
        per_element, name = H * cdiv(T, plan[2]) * D * M, "the chunks' states (PARALLEL)"
    return batch_runs(B, per_element, name)


def _apply(op, *args, cu=None):
    """The op's forward with autograd: the custom op under torch.compile (opaque to the compiler: one node per
    direction, no graph break), else the autograd Function (no dispatcher overhead). -> (y, final state).
    cu: packed sequences' int32 offsets on the inputs' device, or None."""
    y, S_T, z_T = op(*args, cu)[:3] if torch.compiler.is_compiling() else ChunkLinearAttention.apply(*args, cu)
    return y, LinearAttentionState(S_T, z_T)
