"""Packed sequences (cu_seqlens, as fla and flash-attn take them): N sequences of any lengths laid end to end along
the token axis of one tensor with a batch of 1, sequence b its tokens cu_seqlens[b]..cu_seqlens[b + 1]."""
from __future__ import annotations

from typing import List

import torch

from .._checks import fail


def packed_offsets(x: torch.Tensor, cu_seqlens, name: str = "w", layout: str = "[1, total, C]") -> List[int]:
    """cu_seqlens (a 1-D integer tensor or a sequence of ints) checked against x (`layout`, the sequences packed
    along its second axis), as host ints. A CUDA tensor is read back once."""
    if x.dim() != layout.count(",") + 1 or x.shape[0] != 1:
        fail(name, f"shape {layout} with cu_seqlens (the sequences packed end to end)", f"shape {tuple(x.shape)}")
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            fail("cu_seqlens", "a 1-D integer tensor [N + 1]", f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}")
        cu = cu_seqlens.tolist()
    else:
        cu = [int(c) for c in cu_seqlens]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != x.shape[1] or any(b < a for a, b in zip(cu, cu[1:])):
        fail("cu_seqlens", f"N + 1 offsets from 0 to {name}.shape[1] = {x.shape[1]}, never decreasing", cu[:8] +
             (["..."] if len(cu) > 8 else []))
    return cu
