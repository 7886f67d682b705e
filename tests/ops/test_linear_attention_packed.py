"""Packed sequences (cu_seqlens) for causal linear attention: each sequence of [1, total, H, D] tensors runs as if
alone, from its own state (the Triton kernels in one launch a kernel: tests/ops/triton/test_packed.py)."""
import pytest
import torch

from tests.ops.test_causal_tssa_packed import offsets
from tost_edge.ops import LinearAttentionState, causal_linear_attention, causal_linear_attention_qkvpacked

LENGTHS = [5, 1, 0, 63, 17]


def test_each_sequence_as_if_alone():
    torch.manual_seed(0)
    H, D, M, cu = 2, 8, 12, offsets(LENGTHS)
    N = len(LENGTHS)
    q, k = torch.randn(1, cu[-1], H, D, dtype=torch.float64), torch.randn(1, cu[-1], H, D, dtype=torch.float64)
    v = torch.randn(1, cu[-1], H, M, dtype=torch.float64)
    state = LinearAttentionState(torch.rand(N, H, D, M, dtype=torch.float64), torch.rand(N, H, D, dtype=torch.float64))
    y, st = causal_linear_attention(q, k, v, state, cu_seqlens=torch.tensor(cu))
    for b in range(N):
        r = slice(cu[b], cu[b + 1])
        yb, sb = causal_linear_attention(q[:, r], k[:, r], v[:, r], LinearAttentionState(*(s[b:b + 1] for s in state)))
        torch.testing.assert_close(y[:, r], yb)
        for got, want in zip(st, sb):
            torch.testing.assert_close(got[b:b + 1], want)


def test_qkvpacked_and_zero_state():
    """The projection's form packs alike; without a state each sequence starts from zeros."""
    torch.manual_seed(1)
    cu = offsets([3, 9])
    qkv = torch.randn(1, cu[-1], 3, 2, 4, dtype=torch.float64)
    y, st = causal_linear_attention_qkvpacked(qkv, cu_seqlens=cu)
    assert st.kv.shape == (2, 2, 4, 4) and st.k_sum.shape == (2, 2, 4)
    for b in range(2):
        yb, sb = causal_linear_attention_qkvpacked(qkv[:, cu[b]:cu[b + 1]])
        torch.testing.assert_close(y[:, cu[b]:cu[b + 1]], yb)
        torch.testing.assert_close(st.kv[b:b + 1], sb.kv)


@pytest.mark.parametrize("q_shape,cu,state,match", [
    ((2, 6, 2, 4), [0, 6], None, r"q: expected shape \[1, total, H, D\] with cu_seqlens"),
    ((1, 6, 2, 4), [0, 4, 3, 6], None, r"cu_seqlens: expected N \+ 1 offsets from 0 to q.shape\[1\] = 6, never "),
    ((1, 6, 2, 4), [0, 2, 6], LinearAttentionState(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4)),
     r"state.kv: expected shape \(2, 2, 4, 4\), got shape \(1, 2, 4, 4\)"),
], ids=["batched-q", "decreasing", "state-of-one-sequence"])
def test_bad_offsets_and_states_are_named(q_shape, cu, state, match):
    q = torch.randn(*q_shape)
    with pytest.raises(ValueError, match=match):
        causal_linear_attention(q, q, q, state, cu_seqlens=cu)


def test_qkvpacked_checks_its_shape():
    with pytest.raises(ValueError, match=r"qkv: expected shape \[1, total, 3, H, D\] with cu_seqlens"):
        causal_linear_attention_qkvpacked(torch.randn(1, 6, 3, 8), cu_seqlens=[0, 6], backend="triton")


def test_plugin_backend_says_no():
    q = torch.randn(1, 4, 2, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens with backend='plugin': not supported"):
        causal_linear_attention(q, q, q, backend="plugin", cu_seqlens=[0, 4])
