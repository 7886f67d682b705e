"""Packed sequences (cu_seqlens, as fla and flash-attn take them): N sequences of any lengths laid end to end in
one [1, total, C] tensor, each run from its own state and position as if alone. The reference runs them one at a
time (naive_causal_tssa); the Triton kernels walk them in one launch."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..._checks import fail
from .naive import naive_causal_tssa
from .state import CausalTSSAState


def packed_offsets(w: torch.Tensor, cu_seqlens) -> List[int]:
    """cu_seqlens (a 1-D integer tensor or a sequence of ints) checked against w [1, total, C], as host ints."""
    if w.dim() != 3 or w.shape[0] != 1:
        fail("w", "shape [1, total, C] with cu_seqlens (the sequences packed end to end)", f"shape {tuple(w.shape)}")
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            fail("cu_seqlens", "a 1-D integer tensor [N + 1]", f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}")
        cu = cu_seqlens.tolist()
    else:
        cu = [int(c) for c in cu_seqlens]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != w.shape[1] or any(b < a for a, b in zip(cu, cu[1:])):
        fail("cu_seqlens", f"N + 1 offsets from 0 to w.shape[1] = {w.shape[1]}, never decreasing", cu[:8] +
             (["..."] if len(cu) > 8 else []))
    return cu


def naive_causal_tssa_packed(w, temp, denom_bias, num_heads: int, cu: List[int],
                             state: Optional[CausalTSSAState] = None, pos0=0):
    """naive_causal_tssa of each packed sequence alone (cu: checked host offsets). w: [1, total, C]; state: [N, H, D],
    [N, H, D], [N, H] or None; pos0: int or [N]. Returns (y [1, total, C], state [N, ...])."""
    N = len(cu) - 1
    if isinstance(pos0, torch.Tensor) and pos0.dim() == 1 and pos0.shape[0] != N:
        fail("pos0", f"an int or an integer tensor of shape ({N},)", f"shape {tuple(pos0.shape)}")
    ys, states = [], []
    for b in range(N):
        st = None if state is None else CausalTSSAState(*(s[b:b + 1] for s in state))
        pos = pos0[b:b + 1] if isinstance(pos0, torch.Tensor) and pos0.dim() == 1 else pos0
        y, st = naive_causal_tssa(w[:, cu[b]:cu[b + 1]], temp, denom_bias, num_heads, st, pos)
        ys.append(y)
        states.append(st)
    if not states:
        C = w.shape[2]
        return w.clone(), CausalTSSAState.zeros(0, num_heads, C // num_heads, device=w.device)
    return torch.cat(ys, 1), CausalTSSAState(*(torch.cat(parts) for parts in zip(*states)))
