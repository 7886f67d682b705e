"""Causal linear attention with its chunks in parallel (linear_attention.PARALLEL): fla's chunk mode.

The one-program-per-(sequence, head) kernels of linear_attention.py walk the chunks in order, every dot of a chunk
on the serial path: B * H programs (96 at B8 H12, fewer than a large GPU's SMs). Here only the state crosses
chunks. A walk per (sequence, head) computes it and nothing else: the state at each chunk's start, S_c [K, V] and
z_c [K] (forward), and in the backward pass, in the same launch, the gradient flowing into the state after each
chunk, dS_c and dz_c (a reverse walk). Then one program per (sequence, head, chunk) does the chunk's dots from
those: B * H * T / BT programs.

The states are fp32 [B, H, T / BT, K, V] buffers, twice q's size in bf16 at K = V = 64 and BT = 64: the forward
holds one while it runs, the backward two (the forward's are recomputed there, not kept between the passes). The
states are summed chunk by chunk with the same dots as the walking kernels, so both schemes round alike.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .linear_attention import _bwd_chunk, _grad_out, _load_state, _out_chunk, _phi, _rows, _store_state
from .utils import SPILL, alloc, cdiv, interpreting, launch_options, spilled


@triton.jit
def _walk_states(k, v, S0, z0, Sc, zc, S_T, z_T, bh, T, RQK: tl.constexpr, RV: tl.constexpr, NT, H: tl.constexpr,
                 K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                 PREC: tl.constexpr, FINAL: tl.constexpr):
    """Stores the state at the start of each chunk of (sequence, head) bh (Sc: [B, H, NT, K, V], zc: [B, H, NT, K])
    and, where FINAL, at the end."""
    b, h = bh // H, bh % H
    dt = v.dtype.element_ty
    S, z = _load_state(S0, z0, bh, K, V, BK, BV)
    for c in range(0, NT):
        _store_state(Sc, zc, S, z, bh * NT + c, K, V, BK, BV)
        t = c * BT + tl.arange(0, BT)
        kr, _, km = _rows(k, b, h, t, T, RQK, K, BK)
        vc, _, _ = _rows(v, b, h, t, T, RV, V, BV)
        fk, _ = _phi(kr, km)
        S += tl.dot(tl.trans(fk.to(dt)), vc.to(dt), input_precision=PREC)
        z += tl.sum(fk, 0)
    if FINAL:
        _store_state(S_T, z_T, S, z, bh, K, V, BK, BV)


@triton.jit
def _walk_grad_states(q, dy, y, den, gS_T, gz_T, dSc, dzc, dS0, dz0, bh, T, RQK: tl.constexpr, eps, NT, H: tl.constexpr,
                      K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                      PREC: tl.constexpr):
    """Walking the chunks backwards, stores the gradient flowing into the state after each chunk (dSc, dzc) and
    into the initial state (dS0, dz0)."""
    b, h = bh // H, bh % H
    dt = y.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see linear_attention's docstring
    dS, dz = _load_state(gS_T, gz_T, bh, K, V, BK, BV)
    for i in range(0, NT):
        c = NT - 1 - i
        _store_state(dSc, dzc, dS, dz, bh * NT + c, K, V, BK, BV)
        t = c * BT + tl.arange(0, BT)
        qr, _, qm = _rows(q, b, h, t, T, RQK, K, BK)
        do, dd = _grad_out(dy, y, den, b, h, t, T, eps, H, V, BV)
        fq, _ = _phi(qr, qm)
        dS += tl.dot(tl.trans(fq.to(wt)), do.to(wt), input_precision=PREC)
        dz += tl.sum(fq * dd[:, None], 0)
    _store_state(dS0, dz0, dS, dz, bh, K, V, BK, BV)


@triton.jit
def _f_states(k, v, S0, z0, Sc, zc, S_T, z_T, T, RQK: tl.constexpr, RV: tl.constexpr, NT, H: tl.constexpr,
              K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
              PREC: tl.constexpr):
    _walk_states(k, v, S0, z0, Sc, zc, S_T, z_T, tl.program_id(0), T, RQK, RV, NT, H, K, V, BK, BV, BT, PREC, True)


@triton.jit
def _f_chunks(q, k, v, Sc, zc, y, den, T, RQK: tl.constexpr, RV: tl.constexpr, eps, NT, H: tl.constexpr,
              K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
              PREC: tl.constexpr):
    bh, c = tl.program_id(0), tl.program_id(1)
    S, z = _load_state(Sc, zc, bh * NT + c, K, V, BK, BV)
    _out_chunk(q, k, v, y, den, S, z, bh // H, bh % H, c * BT + tl.arange(0, BT), T, RQK, RV, eps, H, K, V, BK, BV,
               PREC, 0, True)


@triton.jit
def _b_states(q, k, v, dy, y, den, S0, z0, gS_T, gz_T, Sc, zc, dSc, dzc, dS0, dz0, T, RQK: tl.constexpr,
              RV: tl.constexpr, eps, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    # program (bh, 0) recomputes the forward's states, (bh, 1) walks the gradients back: independent walks, one launch
    bh = tl.program_id(0)
    if tl.program_id(1) == 0:
        _walk_states(k, v, S0, z0, Sc, zc, S0, z0, bh, T, RQK, RV, NT, H, K, V, BK, BV, BT, PREC, False)
    else:
        _walk_grad_states(q, dy, y, den, gS_T, gz_T, dSc, dzc, dS0, dz0, bh, T, RQK, eps, NT, H, K, V, BK, BV, BT, PREC)


@triton.jit
def _b_chunks(q, k, v, dy, y, den, Sc, zc, dSc, dzc, dq, dk, dv, T, RQK: tl.constexpr, RV: tl.constexpr,
              RG: tl.constexpr, eps, NT, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr, PART: tl.constexpr = 0):
    # d phi(q)_i = sum_{j<=i} (do_i . v_j + dden_i) phi(k)_j + S_c do_i + dden_i z_c
    # d phi(k)_j = sum_{i>=j} (do_i . v_j + dden_i) phi(q)_i + dS_c v_j + dz_c
    # dv_j = sum_{i>=j} A_ij do_i + phi(k)_j dS_c      (S_c, z_c: the state at the chunk's start; dS_c, dz_c: the
    # gradient flowing into the state after it). PART 1: d q only, 2: d k and d v only, 0: all three
    bh, c = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    dt = v.dtype.element_ty
    wt: tl.constexpr = tl.float32 if dt == tl.float16 else dt    # fp16: see linear_attention's docstring
    t = c * BT + tl.arange(0, BT)
    qr, kr, qo, qm, vc, vo, vm, do, dd = _bwd_chunk(q, k, v, dy, y, den, b, h, t, T, RQK, RV, RG, eps, H, K, V, BK, BV,
                                                    0)
    fq, dphi_q = _phi(qr, qm)
    fk, dphi_k = _phi(kr, qm)
    fq_d, fk_d, v_d, do_d = fq.to(wt), fk.to(wt), vc.to(wt), do.to(wt)
    causal = (t[:, None] >= t[None, :]) & (t[:, None] < T)                  # [i, j]; j <= i < T
    M = tl.where(causal, tl.dot(do_d, tl.trans(v_d), input_precision=PREC) + dd[:, None], 0.0)
    if PART != 2:
        S, z = _load_state(Sc, zc, bh * NT + c, K, V, BK, BV)
        dfq = tl.dot(M.to(wt), fk_d, input_precision=PREC) + tl.dot(do_d, tl.trans(S.to(wt)), input_precision=PREC)
        dfq += dd[:, None] * z[None, :]
        tl.store(dq + qo, (dfq * dphi_q).to(dq.dtype.element_ty), mask=qm)
    if PART != 1:
        dS, dz = _load_state(dSc, dzc, bh * NT + c, K, V, BK, BV)
        dfk = tl.dot(tl.trans(M.to(wt)), fq_d, input_precision=PREC) \
            + tl.dot(v_d, tl.trans(dS.to(wt)), input_precision=PREC) + dz[None, :]
        tl.store(dk + qo, (dfk * dphi_k).to(dk.dtype.element_ty), mask=qm)
        A = tl.where(causal, tl.dot(fq_d, tl.trans(fk_d), input_precision=PREC), 0.0)
        dvc = tl.dot(tl.trans(A.to(wt)), do_d, input_precision=PREC) + tl.dot(fk_d, dS.to(wt), input_precision=PREC)
        tl.store(dv + vo, dvc.to(dv.dtype.element_ty), mask=vm)


def _states(B: int, H: int, T: int, K: int, V: int, BT: int, like: torch.Tensor):
    """Per-chunk state buffers: S [B, H, NT, K, V] and z [B, H, NT, K], fp32."""
    NT = cdiv(T, BT)
    return NT, alloc(B, H, NT, K, V, like=like, dtype=torch.float32), alloc(B, H, NT, K, like=like,
                                                                            dtype=torch.float32)


def forward(q, k, v, S0, z0, y, den, S_T, z_T, RQK: int, RV: int, eps: float, BK: int, BV: int, BT: int, warps: int,
            prec: str):
    """Fills y, den, S_T, z_T (see linear_attention._forward): a walk for the chunks' states, then the chunks. RQK,
    RV: elements between the tokens of q and k, of v (linear_attention._token_strides)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT, Sc, zc = _states(B, H, T, K, V, BT, q)
    _f_states[(B * H,)](k, v, S0, z0, Sc, zc, S_T, z_T, T, RQK, RV, NT, H, K, V, BK, BV, BT, prec,
                        **launch_options(warps))
    _f_chunks[(B * H, NT)](q, k, v, Sc, zc, y, den, T, RQK, RV, eps, NT, H, K, V, BK, BV, BT, prec,
                           **launch_options(warps))


def backward(dy, gS_T, gz_T, q, k, v, S0, z0, y, den, dq, dk, dv, dS0, dz0, RQK: int, RV: int, RG: int, eps: float,
             BK: int, BV: int, BT: int, warps: int, prec: str, split: bool | None = None):
    """Fills dq, dk, dv, dS0, dz0 (see linear_attention._backward_into; RG: the gradients' token stride, 0 where they
    are contiguous): both state walks in one launch, then the chunks, d q apart from d k and d v where `split` (None:
    where that spills less than one kernel doing all three, _split)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT, Sc, zc = _states(B, H, T, K, V, BT, q)
    _, dSc, dzc = _states(B, H, T, K, V, BT, q)
    _b_states[(B * H, 2)](q, k, v, dy, y, den, S0, z0, gS_T, gz_T, Sc, zc, dSc, dzc, dS0, dz0, T, RQK, RV, eps, NT, H,
                          K, V, BK, BV, BT, prec, **launch_options(warps))
    grid = (B * H, NT)
    args = (q, k, v, dy, y, den, Sc, zc, dSc, dzc, dq, dk, dv, T, RQK, RV, RG, eps, NT, H, K, V, BK, BV, BT, prec)
    for part in ((1, 2) if _split(split, grid, args, warps) else (0,)):
        _b_chunks[grid](*args, part, **launch_options(warps))


_SPLIT: dict = {}


def _split(split: bool | None, grid, args, warps: int) -> bool:
    """Whether the backward's chunks run as two kernels (d q; d k and d v), each reading the chunk again but holding
    fewer tiles: as asked, or (None) where the one kernel doing all three spills more than utils.SPILL bytes a thread
    and the two spill less (Triton 3.6: sm_87 fp16 120 bytes against none; sm_87 bf16 32 against 136 for d k, d v,
    so one; sm_90 none), decided once per dtype, device, warps and constexprs (H, K, V, BK, BV, BT, PREC: the last
    seven arguments) and token strides, not per sequence length, from the compiled kernels. The interpreter runs the
    one."""
    if split is not None or interpreting():
        return bool(split)
    key = (warps, args[0].dtype, args[0].device, *args[14:17], *args[-7:])
    if key not in _SPLIT:
        spills = []
        for part in (0, 1, 2):
            compiled = _b_chunks.warmup(*args, part, grid=grid, **launch_options(warps))
            spills.append(spilled(compiled) if compiled is not None else 0)
        _SPLIT[key] = spills[0] > SPILL and max(spills[1:]) < spills[0]
    return _SPLIT[key]
