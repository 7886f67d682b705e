"""Token-by-token causal TSSA: the step form a streaming runtime runs (one token per sequence)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import DENOM_MIN, PI_EPS, CausalTSSAState, PosLike, gather_bias, prepare


def step_causal_tssa(x, temp, bias_h, state: CausalTSSAState):
    """One token. x: [B, H, D] (compute dtype), temp: [H], bias_h: [B, H]. Returns (y [B, H, D], state)."""
    D = x.shape[-1]
    wsq = x.square()
    sum_wsq = state.sum_wsq + wsq
    energy = (wsq / sum_wsq.clamp_min(DENOM_MIN)).sum(-1) + D * bias_h   # [B, H]
    pi = torch.softmax(energy * temp, dim=-1)
    sum_pi_wsq = state.sum_pi_wsq + pi.unsqueeze(-1) * wsq
    sum_pi = state.sum_pi + pi
    y = -x * pi.unsqueeze(-1) / (1.0 + sum_pi_wsq / (sum_pi + PI_EPS).unsqueeze(-1))
    return y, CausalTSSAState(sum_wsq, sum_pi_wsq, sum_pi)


def fused_recurrent_causal_tssa(
    w: torch.Tensor,
    temp: torch.Tensor,
    denom_bias: Optional[torch.Tensor],
    num_heads: int,
    state: Optional[CausalTSSAState] = None,
    pos0: PosLike = 0,
) -> Tuple[torch.Tensor, CausalTSSAState]:
    """Same contract as `naive_causal_tssa`, evaluated one token at a time with `step_causal_tssa`."""
    B, T, H, D, temp, bias, state, pos = prepare(w, temp, denom_bias, num_heads, state, pos0)
    cdt = state.sum_wsq.dtype
    x = w.to(cdt).view(B, T, H, D)
    bias_bt = gather_bias(bias, pos, T, H, cdt)                           # [B, T, H]
    ys = []
    for t in range(T):
        y, state = step_causal_tssa(x[:, t], temp.to(cdt), bias_bt[:, t], state)
        ys.append(y)
    y = torch.stack(ys, 1) if ys else x
    return y.reshape(B, T, H * D).to(w.dtype), state
