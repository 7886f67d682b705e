"""Packed sequences (cu_seqlens) through bidirectional TSSA: each sequence of a [1, total, C] tensor has its own
token statistics, as if alone (the Triton kernels, one launch a pass: tests/ops/triton/test_packed.py)."""
import pytest
import torch

from tost_edge.ops import naive_tssa_packed, tssa
from tost_edge.ops.packing import offsets_of as offsets

LENGTHS = [5, 1, 0, 63, 17]


def test_each_sequence_as_if_alone():
    torch.manual_seed(0)
    H, D, cu = 3, 8, offsets(LENGTHS)
    w = torch.randn(1, cu[-1], H * D, dtype=torch.float64, requires_grad=True)
    temp = (torch.rand(H, 1, dtype=torch.float64) + 0.5).requires_grad_()
    y = tssa(w, temp, H, cu_seqlens=torch.tensor(cu))
    g = torch.randn_like(y)
    dw, dt = torch.autograd.grad(y, (w, temp), g)
    dt_alone = torch.zeros_like(temp)
    for a, e in zip(cu, cu[1:]):
        if e == a:
            continue
        part = w[:, a:e].detach().requires_grad_()
        yb = tssa(part, temp, H)
        torch.testing.assert_close(y[:, a:e], yb)
        dwb, dtb = torch.autograd.grad(yb, (part, temp), g[:, a:e])
        torch.testing.assert_close(dw[:, a:e], dwb)
        dt_alone += dtb
    torch.testing.assert_close(dt, dt_alone)


def test_statistics_do_not_cross_sequences():
    """Scaling one sequence's tokens changes nothing in another's output (padding or a neighbour never leaks)."""
    cu = offsets([7, 9])
    w, temp = torch.randn(1, 16, 16), torch.ones(2)
    y = tssa(w, temp, 2, cu_seqlens=cu)
    w2 = w.clone()
    w2[:, 7:] *= 10
    y2 = tssa(w2, temp, 2, cu_seqlens=cu)
    torch.testing.assert_close(y2[:, :7], y[:, :7])
    assert not torch.allclose(y2[:, 7:], y[:, 7:])


def test_no_tokens_at_all():
    w = torch.randn(1, 0, 8)
    assert naive_tssa_packed(w, torch.ones(2), 2, [0, 0]).shape == (1, 0, 8)


@pytest.mark.parametrize("w_shape,cu,match", [
    ((2, 6, 8), [0, 6], r"w: expected shape \[1, total, C\] with cu_seqlens"),
    ((1, 6, 8), [0, 4, 3, 6], r"cu_seqlens: expected N \+ 1 offsets from 0 to w.shape\[1\] = 6, never decreasing"),
    ((1, 6, 8), [0, 5], r"cu_seqlens: expected N \+ 1 offsets from 0 to w.shape\[1\] = 6"),
    ((1, 6, 8), torch.tensor([0.0, 6.0]), r"cu_seqlens: expected a 1-D integer tensor \[N \+ 1\]"),
], ids=["batched-w", "decreasing", "short-of-total", "float-offsets"])
def test_bad_offsets_are_named(w_shape, cu, match):
    with pytest.raises(ValueError, match=match):
        tssa(torch.randn(*w_shape), torch.ones(2), 2, cu_seqlens=cu)


def test_plugin_backend_says_no():
    with pytest.raises(ValueError, match=r"tssa: cu_seqlens with backend='plugin': not supported"):
        tssa(torch.randn(1, 6, 8), torch.ones(2), 2, backend="plugin", cu_seqlens=[0, 6])
