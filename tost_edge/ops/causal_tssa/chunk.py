"""Chunked causal TSSA: parallel inside a chunk, fp32 state carried across chunks (the kernels' layout)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .naive import _block
from .state import CausalTSSAState, PosLike, gather_bias, prepare


def chunk_causal_tssa(
    w: torch.Tensor,
    temp: torch.Tensor,
    denom_bias: Optional[torch.Tensor],
    num_heads: int,
    state: Optional[CausalTSSAState] = None,
    pos0: PosLike = 0,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, CausalTSSAState]:
    """Same contract as `naive_causal_tssa`; w: [B, T, C] is processed chunk_size tokens at a time."""
    B, T, H, D, temp, bias, state, pos = prepare(w, temp, denom_bias, num_heads, state, pos0)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
    cdt = state.sum_wsq.dtype
    x = w.to(cdt).view(B, T, H, D)
    temp = temp.to(cdt)
    ys = []
    for start in range(0, T, chunk_size):
        xc = x[:, start:start + chunk_size]
        yc, state = _block(xc, temp, gather_bias(bias, pos + start, xc.shape[1], H, cdt), state)
        ys.append(yc)
    y = torch.cat(ys, 1) if ys else x
    return y.reshape(B, T, H * D).to(w.dtype), state
