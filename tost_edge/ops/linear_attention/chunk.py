"""Chunked causal linear attention: masked attention inside a chunk, state carried across chunks."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import LinearAttentionState, feature_map, prepare


def chunk_causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    state: Optional[LinearAttentionState] = None, eps: float = 1e-6, chunk_size: int = 64,
) -> Tuple[torch.Tensor, LinearAttentionState]:
    """Same contract as `naive_causal_linear_attention`; q, k: [B, T, H, D], v: [B, T, H, M]."""
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    fq, fk, vv = feature_map(q.to(sdt)), feature_map(k.to(sdt)), v.to(sdt)
    kv, k_sum = state
    ys = []
    for s in range(0, T, chunk_size):
        cq, ck, cv = fq[:, s:s + chunk_size], fk[:, s:s + chunk_size], vv[:, s:s + chunk_size]
        scores = torch.einsum("bihd,bjhd->bhij", cq, ck).tril()         # intra-chunk, [B, H, c, c]
        num = torch.einsum("bhij,bjhm->bihm", scores, cv) + torch.einsum("bihd,bhdm->bihm", cq, kv)
        den = scores.sum(-1).transpose(1, 2) + torch.einsum("bihd,bhd->bih", cq, k_sum)
        ys.append(num / (den.unsqueeze(-1) + eps))
        kv = kv + torch.einsum("bjhd,bjhm->bhdm", ck, cv)
        k_sum = k_sum + ck.sum(1)
    y = torch.cat(ys, 1) if ys else vv
    return y.to(q.dtype), LinearAttentionState(kv, k_sum)
