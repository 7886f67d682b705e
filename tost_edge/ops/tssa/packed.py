"""TSSA of packed sequences (ops/packing.py): the sequences of one [1, total, C] tensor, each attended to as if alone
(its own token statistics: nothing is summed across sequences). Images of different sizes, clips of different lengths
or documents go through one call without padding. The reference runs them one at a time (naive_tssa); the Triton
kernels take them all in one launch a pass."""
from __future__ import annotations

from typing import List

import torch

from ..packing import host_offsets
from .naive import check_w, naive_tssa


def naive_tssa_packed(w: torch.Tensor, temp: torch.Tensor, num_heads: int, cu: List[int]) -> torch.Tensor:
    """naive_tssa of each packed sequence alone. w: [1, total, C]; cu: checked offsets [N + 1] (an empty sequence
    contributes no token). Returns y: [1, total, C] in w's dtype."""
    cu = host_offsets(cu, "tssa")
    if w.shape[1] == 0:
        check_w(w.new_empty(1, 1, w.shape[2]), num_heads)
        return w.clone()
    return torch.cat([naive_tssa(w[:, a:e], temp, num_heads) for a, e in zip(cu, cu[1:]) if e > a], 1)
