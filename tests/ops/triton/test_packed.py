"""Causal TSSA's Triton kernels on packed sequences (cu_seqlens): one launch a direction walks every sequence, each
from its own state and position (slices past a sequence's end walk nothing), against the fp64 reference run one
sequence at a time: output, final states and every gradient."""
import pytest
import torch

from tests.conftest import DEVICE, assert_close
from tests.ops.triton.test_triton_ops import check_causal_against, leaf
from tost_edge.ops import CausalTSSAState, causal_tssa, naive_causal_tssa_packed
from tost_edge.ops.triton import causal_tssa as ct
from tost_edge.ops.triton.utils import deterministic_algorithms


def offsets(lengths):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


@pytest.mark.parametrize("lengths,D,H,walk", [([1, 63, 0, 130, 5], 48, 3, "tiled"), ([130, 7], 64, 2, "walked"),
                                               ([1], 64, 4, "tiled")],
                         ids=["L1-63-0-130-5-D48-H3", "L130-7-D64-H2-walked", "L1-D64-H4"])
def test_packed_against_fp64_one_sequence_at_a_time(lengths, D, H, walk, monkeypatch):
    monkeypatch.setattr(ct, "TILED", walk == "tiled")
    monkeypatch.setattr(ct, "CHUNKED", True)                  # (what packing overrides: the fused scheme runs)
    monkeypatch.setattr(ct, "FUSED", False)
    cu, N = offsets(lengths), len(lengths)
    w, temp, bias = leaf(1, cu[-1], H * D), leaf(H, rand=True, offset=0.5), leaf(H, 150, scale=0.1)
    s0 = [leaf(N, H, D, rand=True), leaf(N, H, D, rand=True), leaf(N, H, rand=True)]
    pos = torch.arange(N, device=DEVICE) * 3
    y, s = causal_tssa(w, temp, bias, H, CausalTSSAState(*s0), pos, backend="triton",
                       cu_seqlens=torch.tensor(cu, device=DEVICE))
    yr, sr = naive_causal_tssa_packed(w.double(), temp.double(), bias.double(), H, cu,
                                      CausalTSSAState(*[x.double() for x in s0]), pos)
    check_causal_against((y, s), (yr, sr), [w, temp, bias, *s0])


def test_packed_from_zero_state_without_positions():
    """No state (zeros), no position table (a position-free model), several slices a sequence."""
    cu = offsets([40, 90])
    w, temp = leaf(1, cu[-1], 2 * 16), leaf(2, rand=True, offset=0.5)
    y, s = causal_tssa(w, temp, None, 2, backend="triton", cu_seqlens=cu)
    yr, sr = naive_causal_tssa_packed(w.double(), temp.double(), None, 2, cu)
    assert_close("y", yr, y, 1e-5)
    for a, b in zip(s, sr):
        assert_close("state", b, a, 1e-5)


def test_packed_is_not_for_deterministic_mode():
    w = leaf(1, 6, 16)
    with deterministic_algorithms(), pytest.raises(RuntimeError, match=r"not under torch.use_deterministic_"):
        causal_tssa(w, torch.ones(2, device=DEVICE), None, 2, backend="triton", cu_seqlens=[0, 2, 6])
