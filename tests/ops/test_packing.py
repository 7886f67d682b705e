"""Packed sequences' offsets (ops/packing.py): built from lengths, checked once, and their device copy made once."""
import pytest
import torch

from tost_edge.ops import offsets_of, packed_offsets
from tost_edge.ops.packing import CheckedOffsets, device_offsets


def test_offsets_of_lengths():
    assert offsets_of([3, 0, 5]) == [0, 3, 3, 8]
    assert offsets_of([]) == [0]


def test_checked_offsets_are_taken_as_they_are_for_as_many_tokens():
    w = torch.randn(1, 8, 4)
    cu = packed_offsets(w, [0, 3, 8])
    assert isinstance(cu, CheckedOffsets) and list(cu) == [0, 3, 8]
    assert packed_offsets(w, cu) is cu                                   # (no second check)
    with pytest.raises(ValueError, match=r"cu_seqlens: expected N \+ 1 offsets from 0 to w.shape\[1\] = 9"):
        packed_offsets(torch.randn(1, 9, 4), cu)                         # another tensor: checked again


def test_device_copy_made_once_a_device():
    cu = packed_offsets(torch.randn(1, 8, 4), [0, 3, 8])
    t = device_offsets(cu, "cpu")
    assert t.dtype == torch.int32 and t.tolist() == [0, 3, 8]
    assert device_offsets(cu, torch.device("cpu")) is t
    assert device_offsets([0, 3, 8], "cpu") is not device_offsets([0, 3, 8], "cpu")    # (plain ints: no cache)
