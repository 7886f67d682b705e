"""Reference causal TSSA (parallel form): the core of the official `CausalSelfAttention_TSSA`.

Per head h, token t (positions p = pos0 + t), with S the carried-in state:
    denom_t   = max(S.sum_wsq + sum_{s<=t} w_s^2, 1e-12)
    energy_t  = sum_d (w_t^2 / denom_t + denom_bias[h, p])   (the bias is added per channel)
    Pi_t      = softmax over heads of temp_h * energy_t
    dots_t    = (S.sum_pi_wsq + sum_{s<=t} Pi_s w_s^2) / (S.sum_pi + sum_{s<=t} Pi_s + 1e-8)
    y_t       = -w_t * Pi_t / (1 + dots_t)
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import DENOM_MIN, PI_EPS, CausalTSSAState, PosLike, gather_bias, prepare


def _block(x, temp, bias_bt, state: CausalTSSAState):
    """One block of tokens, parallel over time. x: [B, T, H, D] (compute dtype), bias_bt: [B, T, H]."""
    D = x.shape[-1]
    wsq = x.square()                                                      # [B, T, H, D]
    denom = (state.sum_wsq.unsqueeze(1) + wsq.cumsum(1)).clamp_min(DENOM_MIN)
    energy = (wsq / denom).sum(-1) + D * bias_bt                          # [B, T, H]
    pi = torch.softmax(energy * temp, dim=-1)                             # over heads
    cum_pi_wsq = state.sum_pi_wsq.unsqueeze(1) + (pi.unsqueeze(-1) * wsq).cumsum(1)
    cum_pi = state.sum_pi.unsqueeze(1) + pi.cumsum(1)                     # [B, T, H]
    dots = cum_pi_wsq / (cum_pi + PI_EPS).unsqueeze(-1)                   # [B, T, H, D]
    y = -x * pi.unsqueeze(-1) / (1.0 + dots)
    final = CausalTSSAState(state.sum_wsq + wsq.sum(1), cum_pi_wsq[:, -1], cum_pi[:, -1])
    return y, final


def naive_causal_tssa(
    w: torch.Tensor,
    temp: torch.Tensor,
    denom_bias: Optional[torch.Tensor],
    num_heads: int,
    state: Optional[CausalTSSAState] = None,
    pos0: PosLike = 0,
) -> Tuple[torch.Tensor, CausalTSSAState]:
    """Causal TSSA over a block of tokens, all at once.

    Args:
        w:          [B, T, C], C = H * D head-major.
        temp:       [H] or [H, 1].
        denom_bias: [H, Tmax] or [H, Tmax, 1], or None for position-free (unbounded) models.
        num_heads:  H.
        state:      CausalTSSAState carried in (zeros when None).
        pos0:       position of w's first token: int, or [B] int64 when sequences sit at different positions.
    Returns:
        y: [B, T, C] in w's dtype; state: CausalTSSAState after the last token (fp32).
    """
    B, T, H, D, temp, bias, state, pos = prepare(w, temp, denom_bias, num_heads, state, pos0)
    cdt = state.sum_wsq.dtype
    if T == 0:
        return w.clone(), state
    x = w.to(cdt).view(B, T, H, D)
    y, final = _block(x, temp.to(cdt), gather_bias(bias, pos, T, H, cdt), state)
    return y.reshape(B, T, H * D).to(w.dtype), final
