"""The math of tost-edge. The fp32 torch references (`naive_*`) are the spec; every other form agrees with them.

Public ops take `backend="torch"` (the parallel reference, differentiable, exportable to ONNX) or
`backend="triton"` (fused kernels from `tost_edge.ops.triton`; a clear error where Triton cannot run).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .causal_tssa import (CausalTSSAState, chunk_causal_tssa, fused_recurrent_causal_tssa, naive_causal_tssa,
                          naive_causal_tssa_packed, step_causal_tssa)
from .linear_attention import (LinearAttentionState, chunk_causal_linear_attention,
                               fused_recurrent_causal_linear_attention, naive_causal_linear_attention,
                               naive_causal_linear_attention_packed, naive_linear_attention, step_linear_attention)
from .linear_attention.state import unpack_qkv
from .packing import offsets_of, packed_offsets
from .tssa import naive_tssa, naive_tssa_packed

BACKENDS = ("torch", "triton", "plugin")  # "plugin": one custom op per call, for ONNX export


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def tssa(w: torch.Tensor, temp: torch.Tensor, num_heads: int, backend: str = "torch", cu_seqlens=None,
         max_seqlen: Optional[int] = None) -> torch.Tensor:
    """Bidirectional TSSA. w: [B, N, C] (C = H*D head-major), temp: [H] or [H, 1] -> y: [B, N, C].

    Packed sequences (cu_seqlens: [S + 1] ints, 0 first, the last w.shape[1], never decreasing): w is [1, total, C]
    and sequence s its tokens cu_seqlens[s]..cu_seqlens[s + 1], each with its own token statistics as if alone
    (images of several sizes in one call, without padding). Read on the host (a CUDA tensor is read back once),
    except under torch.compile with backend="triton", where a tensor's values stay on the device and max_seqlen
    (an int, at least the longest sequence's length) sizes the launch."""
    _check_backend(backend)
    if cu_seqlens is not None:
        cu = packed_offsets(w, cu_seqlens)
        if backend == "triton":
            from .triton import triton_tssa_packed
            return triton_tssa_packed(w, temp, num_heads, cu, max_seqlen)
        if backend == "plugin":
            raise ValueError("tssa: cu_seqlens with backend='plugin': not supported (export one sequence a batch "
                             "element)")
        return naive_tssa_packed(w, temp, num_heads, cu)
    if backend == "triton":
        from .triton import triton_tssa
        return triton_tssa(w, temp, num_heads)
    if backend == "plugin":
        from .custom import plugin_tssa
        return plugin_tssa(w, temp, num_heads)
    return naive_tssa(w, temp, num_heads)


def causal_tssa(w: torch.Tensor, temp: torch.Tensor, denom_bias: Optional[torch.Tensor], num_heads: int,
                state: Optional[CausalTSSAState] = None, pos0=0, backend: str = "torch",
                cu_seqlens=None, max_seqlen: Optional[int] = None) -> Tuple[torch.Tensor, CausalTSSAState]:
    """Causal TSSA. w: [B, T, C], temp: [H] or [H, 1], denom_bias: [H, Tmax(, 1)] or None,
    state: (sum_wsq [B, H, D], sum_pi_wsq [B, H, D], sum_pi [B, H]) fp32, pos0: int or [B] int64.
    Returns (y [B, T, C], state).

    Packed sequences (cu_seqlens: [N + 1] ints, 0 first, the last w.shape[1], never decreasing): w is [1, total, C]
    and sequence b its tokens cu_seqlens[b]..cu_seqlens[b + 1], each from its own state ([N, H, D], ...) and
    position (pos0: int or [N]) as if run alone: no sums cross from one sequence into the next. Read on the host
    (a CUDA tensor is read back once), except under torch.compile, where a tensor's values stay on the device and
    max_seqlen (an int, at least the longest sequence's length, e.g. the model's block size) sizes the launch."""
    _check_backend(backend)
    if cu_seqlens is not None:
        cu = packed_offsets(w, cu_seqlens)
        if backend == "triton":
            from .triton import triton_causal_tssa_packed
            return triton_causal_tssa_packed(w, temp, denom_bias, num_heads, cu, state, pos0, max_seqlen)
        if backend == "plugin":
            raise ValueError("causal_tssa: cu_seqlens with backend='plugin': not supported (export the padded form)")
        return naive_causal_tssa_packed(w, temp, denom_bias, num_heads, cu, state, pos0)
    if backend == "triton":
        from .triton import triton_causal_tssa
        return triton_causal_tssa(w, temp, denom_bias, num_heads, state, pos0)
    if backend == "plugin":
        from .custom import plugin_causal_tssa
        return plugin_causal_tssa(w, temp, denom_bias, num_heads, state, pos0)
    return naive_causal_tssa(w, temp, denom_bias, num_heads, state, pos0)


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            state: Optional[LinearAttentionState] = None, eps: float = 1e-6,
                            backend: str = "torch", cu_seqlens=None) -> Tuple[torch.Tensor, LinearAttentionState]:
    """Causal linear attention. q, k: [B, T, H, D], v: [B, T, H, M], state: (kv [B, H, D, M], k_sum [B, H, D]).
    Returns (y [B, T, H, M], state).

    Packed sequences (cu_seqlens: [N + 1] ints, 0 first, the last q.shape[1], never decreasing): q, k, v are
    [1, total, H, D] and sequence b its tokens cu_seqlens[b]..cu_seqlens[b + 1], each from its own state
    ([N, H, D, M], [N, H, D]) as if run alone. Read on the host (a CUDA tensor is read back once), except under
    torch.compile, where a tensor's values stay on the device (the Triton kernels read them there)."""
    _check_backend(backend)
    if cu_seqlens is not None:
        cu = packed_offsets(q, cu_seqlens, "q", "[1, total, H, D]")
        if backend == "triton":
            from .triton import triton_causal_linear_attention_packed
            return triton_causal_linear_attention_packed(q, k, v, cu, state, eps)
        if backend == "plugin":
            raise ValueError("causal_linear_attention: cu_seqlens with backend='plugin': not supported (export the "
                             "padded form)")
        return naive_causal_linear_attention_packed(q, k, v, cu, state, eps)
    if backend == "triton":
        from .triton import triton_causal_linear_attention
        return triton_causal_linear_attention(q, k, v, state, eps)
    if backend == "plugin":
        from .custom import plugin_causal_linear_attention
        return plugin_causal_linear_attention(q, k, v, state, eps)
    return naive_causal_linear_attention(q, k, v, state, eps)


def causal_linear_attention_qkvpacked(qkv: torch.Tensor, state: Optional[LinearAttentionState] = None,
                                      eps: float = 1e-6, backend: str = "torch",
                                      cu_seqlens=None) -> Tuple[torch.Tensor, LinearAttentionState]:
    """causal_linear_attention of q, k, v = qkv.unbind(2), qkv: [B, T, 3, H, D] (one projection, as a model makes
    them). The same results; with backend="triton" qkv's gradient comes back as one tensor, written where it lies (the
    unbound form has autograd stack d q, d k, d v into it: a copy of all three). Returns (y [B, T, H, D], state).
    Packed sequences: qkv [1, total, 3, H, D] and cu_seqlens as causal_linear_attention's."""
    _check_backend(backend)
    if backend == "triton":
        from .triton import triton_causal_linear_attention_qkvpacked
        cu = None if cu_seqlens is None else packed_offsets(qkv, cu_seqlens, "qkv", "[1, total, 3, H, D]")
        return triton_causal_linear_attention_qkvpacked(qkv, state, eps, cu)
    return causal_linear_attention(*unpack_qkv(qkv), state, eps, backend, cu_seqlens)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-causal linear attention. q, k: [B, T, H, D], v: [B, T, H, M] -> [B, T, H, M]."""
    return naive_linear_attention(q, k, v, eps)


__all__ = ["tssa", "causal_tssa", "causal_linear_attention", "causal_linear_attention_qkvpacked", "linear_attention",
           "CausalTSSAState", "LinearAttentionState", "naive_tssa", "naive_causal_tssa", "chunk_causal_tssa",
           "fused_recurrent_causal_tssa", "step_causal_tssa", "naive_causal_linear_attention",
           "chunk_causal_linear_attention", "fused_recurrent_causal_linear_attention", "step_linear_attention",
           "naive_linear_attention", "naive_tssa_packed", "naive_causal_tssa_packed",
           "naive_causal_linear_attention_packed",
           "packed_offsets", "offsets_of", "BACKENDS"]
