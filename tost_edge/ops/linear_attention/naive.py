"""Reference linear attention (Katharopoulos et al. 2020), phi(x) = elu(x) + 1.

causal:  y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),  S_i = S_0 + sum_{j<=i} phi(k_j) v_j^T,  z_i = z_0 + sum_{j<=i} phi(k_j)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import LinearAttentionState, feature_map, prepare


def naive_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-causal: every token attends to all tokens.

    q, k: [B, T, H, D];  v: [B, T, H, M]  ->  y: [B, T, H, M] in q's dtype.
    """
    B, T, H, D, M, sdt, _ = prepare(q, k, v, None)
    fq, fk = feature_map(q.to(sdt)), feature_map(k.to(sdt))
    kv = torch.einsum("bthd,bthm->bhdm", fk, v.to(sdt))
    num = torch.einsum("bthd,bhdm->bthm", fq, kv)
    den = torch.einsum("bthd,bhd->bth", fq, fk.sum(1))
    return (num / (den.unsqueeze(-1) + eps)).to(q.dtype)


def naive_causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    state: Optional[LinearAttentionState] = None, eps: float = 1e-6,
) -> Tuple[torch.Tensor, LinearAttentionState]:
    """Parallel (quadratic, masked) causal form.

    q, k: [B, T, H, D];  v: [B, T, H, M];  state: (kv [B, H, D, M], k_sum [B, H, D]) fp32.
    Returns y: [B, T, H, M] in q's dtype and the state after the last token.
    """
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    fq, fk, vv = feature_map(q.to(sdt)), feature_map(k.to(sdt)), v.to(sdt)
    scores = torch.einsum("bihd,bjhd->bhij", fq, fk).tril()              # [B, H, T, T]
    num = torch.einsum("bhij,bjhm->bihm", scores, vv) + torch.einsum("bihd,bhdm->bihm", fq, state.kv)
    den = scores.sum(-1).transpose(1, 2) + torch.einsum("bihd,bhd->bih", fq, state.k_sum)
    y = num / (den.unsqueeze(-1) + eps)
    final = LinearAttentionState(state.kv + torch.einsum("bjhd,bjhm->bhdm", fk, vv), state.k_sum + fk.sum(1))
    return y.to(q.dtype), final
