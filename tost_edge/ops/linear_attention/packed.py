"""Causal linear attention of packed sequences (ops/packing.py): the sequences of [1, total, H, D] tensors, each run
from its own state as if alone. The reference runs them one at a time; the Triton kernels walk them in one launch."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..packing import host_offsets
from .naive import naive_causal_linear_attention
from .state import LinearAttentionState, prepare


def naive_causal_linear_attention_packed(q, k, v, cu: List[int], state: Optional[LinearAttentionState] = None,
                                         eps: float = 1e-6):
    """naive_causal_linear_attention of each packed sequence alone (cu: checked host offsets). q, k: [1, total, H, D],
    v: [1, total, H, M]; state: (kv [N, H, D, M], k_sum [N, H, D]) or None.
    Returns (y [1, total, H, M], state [N, ...])."""
    cu = host_offsets(cu, "causal_linear_attention")
    N = len(cu) - 1
    *_, state = prepare(q, k, v, state, batch=N)
    ys, states = [], []
    for b in range(N):
        y, st = naive_causal_linear_attention(q[:, cu[b]:cu[b + 1]], k[:, cu[b]:cu[b + 1]], v[:, cu[b]:cu[b + 1]],
                                              LinearAttentionState(*(s[b:b + 1] for s in state)), eps)
        ys.append(y)
        states.append(st)
    return torch.cat(ys, 1), LinearAttentionState(*(torch.cat(parts) for parts in zip(*states)))
