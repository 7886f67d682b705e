"""Token-by-token causal linear attention (the streaming step form)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import LinearAttentionState, feature_map, prepare


def step_linear_attention(q, k, v, state: LinearAttentionState, eps: float = 1e-6):
    """One token. q, k: [B, H, D], v: [B, H, M] (compute dtype). Returns (y [B, H, M], state)."""
    fq, fk = feature_map(q), feature_map(k)
    kv = state.kv + fk.unsqueeze(-1) * v.unsqueeze(-2)
    k_sum = state.k_sum + fk
    num = torch.einsum("bhd,bhdm->bhm", fq, kv)
    den = (fq * k_sum).sum(-1, keepdim=True)
    return num / (den + eps), LinearAttentionState(kv, k_sum)


def fused_recurrent_causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    state: Optional[LinearAttentionState] = None, eps: float = 1e-6,
) -> Tuple[torch.Tensor, LinearAttentionState]:
    """Same contract as `naive_causal_linear_attention`, one token at a time."""
    B, T, H, D, M, sdt, state = prepare(q, k, v, state)
    ys = []
    for t in range(T):
        y, state = step_linear_attention(q[:, t].to(sdt), k[:, t].to(sdt), v[:, t].to(sdt), state, eps)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else v.to(sdt)
    return y.to(q.dtype), state
