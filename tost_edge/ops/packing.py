"""Packed sequences (cu_seqlens, as fla and flash-attn take them): N sequences of any lengths laid end to end along
the token axis of one tensor with a batch of 1, sequence b its tokens cu_seqlens[b]..cu_seqlens[b + 1]."""
from __future__ import annotations

from typing import List, Tuple, Union

import torch

from .._checks import fail


def offsets_of(lengths) -> List[int]:
    """cu_seqlens of sequences of these lengths laid end to end: [0, n0, n0 + n1, ..., total]."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    return cu


class CheckedOffsets(tuple):
    """Host offsets packed_offsets has checked, for a total of `total` tokens: a model checks them once a call and its
    layers' ops take them as they are, each device's int32 copy made once (device_offsets), not once a layer."""

    def __new__(cls, cu):
        self = super().__new__(cls, cu)
        self.total = self[-1]
        self.on_device = {}
        return self


def device_offsets(cu, device) -> torch.Tensor:
    """Host offsets as an int32 tensor on `device` for the kernels (CheckedOffsets: made once a device)."""
    made = getattr(cu, "on_device", None)
    key = torch.device(device)
    if made is not None and key in made:
        return made[key]
    t = torch.tensor(list(cu), dtype=torch.int32).to(device, non_blocking=True)
    if made is not None:
        made[key] = t
    return t


def packed_offsets(x: torch.Tensor, cu_seqlens, name: str = "w",
                   layout: str = "[1, total, C]") -> Union[List[int], torch.Tensor]:
    """cu_seqlens (a 1-D integer tensor or a sequence of ints) checked against x (`layout`, the sequences packed
    along its second axis), as host ints (CheckedOffsets: taken as they are by the next call on as many tokens). A
    CUDA tensor is read back once. Under torch.compile a tensor stays one (reading it would end the graph): its shape
    and dtype are checked on the host and its values on the device by an asynchronous assert; host ints there are
    constants of the graph (a new graph for other offsets)."""
    if x.dim() != layout.count(",") + 1 or x.shape[0] != 1:
        fail(name, f"shape {layout} with cu_seqlens (the sequences packed end to end)", f"shape {tuple(x.shape)}")
    if isinstance(cu_seqlens, CheckedOffsets) and cu_seqlens.total == x.shape[1]:
        return cu_seqlens
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
            fail("cu_seqlens", "a 1-D integer tensor [N + 1]", f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}")
        if torch.compiler.is_compiling():
            if cu_seqlens.shape[0] < 2:
                fail("cu_seqlens", "N + 1 offsets, N at least 1", f"shape {tuple(cu_seqlens.shape)}")
            # checked where they lie, without a wait: bad offsets stop the run (a device-side assert on a GPU) before
            # a kernel addresses tokens past the tensor's end
            ok = (cu_seqlens[0] == 0) & (cu_seqlens[-1] == x.shape[1]) & (cu_seqlens.diff() >= 0).all()
            torch._assert_async(ok, f"cu_seqlens: expected N + 1 offsets from 0 to {name}.shape[1], never "
                                    "decreasing (checked on the device under torch.compile)")
            return cu_seqlens
        cu = cu_seqlens.tolist()
    else:
        cu = [int(c) for c in cu_seqlens]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != x.shape[1] or any(b < a for a, b in zip(cu, cu[1:])):
        fail("cu_seqlens", f"N + 1 offsets from 0 to {name}.shape[1] = {x.shape[1]}, never decreasing", cu[:8] +
             (["..."] if len(cu) > 8 else []))
    return cu if torch.compiler.is_compiling() else CheckedOffsets(cu)    # (graph constants: plain ints)


def sequence_positions(cu: torch.Tensor, total: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each packed token's sequence [total] and its position within that sequence [total], from the offsets where
    they lie (searchsorted: nothing read back)."""
    row = torch.arange(total, device=cu.device, dtype=cu.dtype)
    seq = torch.searchsorted(cu[1:], row, right=True)
    return seq, row - cu[seq]


def host_offsets(cu, op: str) -> List[int]:
    """Offsets as host ints (the references slice with them): a tensor is read back, which torch.compile cannot
    do inside a graph."""
    if isinstance(cu, torch.Tensor):
        if torch.compiler.is_compiling():
            raise ValueError(f"{op}: cu_seqlens as a tensor under torch.compile needs backend='triton' (the torch "
                             "reference slices the documents on the host; a list of ints works, one graph per "
                             "offsets)")
        return cu.tolist()
    return list(cu)
