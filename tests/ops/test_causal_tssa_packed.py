"""Packed sequences (cu_seqlens): each sequence of a [1, total, C] tensor runs as if alone, from its own state and
position, on both backends (the Triton kernels in one launch a direction: tests/ops/triton/test_packed.py)."""
import pytest
import torch

from tost_edge.ops import CausalTSSAState, causal_tssa
from tost_edge.ops.packing import offsets_of as offsets

LENGTHS = [5, 1, 0, 63, 17]


def test_each_sequence_as_if_alone():
    torch.manual_seed(0)
    H, D, cu = 2, 8, offsets(LENGTHS)
    N = len(LENGTHS)
    w = torch.randn(1, cu[-1], H * D, dtype=torch.float64)
    temp, bias = torch.rand(H, dtype=torch.float64) + 0.5, 0.1 * torch.randn(H, 80, dtype=torch.float64)
    state = CausalTSSAState(torch.rand(N, H, D, dtype=torch.float64), torch.rand(N, H, D, dtype=torch.float64),
                            torch.rand(N, H, dtype=torch.float64))
    pos = torch.tensor([0, 3, 9, 2, 40])
    y, st = causal_tssa(w, temp, bias, H, state, pos, cu_seqlens=torch.tensor(cu))
    for b in range(N):
        yb, sb = causal_tssa(w[:, cu[b]:cu[b + 1]], temp, bias, H, CausalTSSAState(*(s[b:b + 1] for s in state)),
                             pos[b:b + 1])
        torch.testing.assert_close(y[:, cu[b]:cu[b + 1]], yb)
        for got, want in zip(st, sb):
            torch.testing.assert_close(got[b:b + 1], want)


@pytest.mark.parametrize("w_shape,cu,match", [
    ((2, 6, 8), [0, 6], r"w: expected shape \[1, total, C\] with cu_seqlens"),
    ((1, 6, 8), [0, 4, 3, 6], r"cu_seqlens: expected N \+ 1 offsets from 0 to w.shape\[1\] = 6, never decreasing"),
    ((1, 6, 8), [0, 5], r"cu_seqlens: expected N \+ 1 offsets from 0 to w.shape\[1\] = 6"),
    ((1, 6, 8), torch.tensor([[0, 6]]), r"cu_seqlens: expected a 1-D integer tensor \[N \+ 1\]"),
], ids=["batched-w", "decreasing", "short-of-total", "2-D"])
def test_bad_offsets_are_named(w_shape, cu, match):
    with pytest.raises(ValueError, match=match):
        causal_tssa(torch.randn(*w_shape), torch.ones(2), None, 2, cu_seqlens=cu)


def test_positions_checked_per_sequence():
    """Each sequence's last position must fit the position table: a short sequence may start late."""
    w, temp, bias = torch.randn(1, 12, 8), torch.ones(2), torch.zeros(2, 12)
    causal_tssa(w, temp, bias, 2, pos0=torch.tensor([0, 10]), cu_seqlens=[0, 10, 12])     # 10 + 2 fits
    with pytest.raises(ValueError, match=r"pos0 \+ T: expected at most denom_bias.shape\[1\] = 12"):
        causal_tssa(w, temp, bias, 2, pos0=torch.tensor([0, 11]), cu_seqlens=[0, 10, 12])


def test_plugin_backend_says_no():
    with pytest.raises(ValueError, match=r"cu_seqlens with backend='plugin': not supported"):
        causal_tssa(torch.randn(1, 4, 8), torch.ones(2), None, 2, backend="plugin", cu_seqlens=[0, 4])
