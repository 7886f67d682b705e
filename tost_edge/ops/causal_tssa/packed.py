"""Causal TSSA of packed sequences (ops/packing.py): the sequences of one [1, total, C] tensor, each run from its
own state and position as if alone. The reference runs them one at a time (naive_causal_tssa); the Triton kernels
walk them in one launch."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..._checks import fail
from ..packing import host_offsets
from .naive import naive_causal_tssa
from .state import CausalTSSAState


def naive_causal_tssa_packed(w, temp, denom_bias, num_heads: int, cu: List[int],
                             state: Optional[CausalTSSAState] = None, pos0=0):
    """naive_causal_tssa of each packed sequence alone (cu: checked host offsets). w: [1, total, C]; state: [N, H, D],
    [N, H, D], [N, H] or None; pos0: int or [N]. Returns (y [1, total, C], state [N, ...])."""
    cu = host_offsets(cu, "causal_tssa")
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
    return torch.cat(ys, 1), CausalTSSAState(*(torch.cat(parts) for parts in zip(*states)))
