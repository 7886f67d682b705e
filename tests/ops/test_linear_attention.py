import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from tost_edge.ops import (LinearAttentionState, causal_linear_attention, chunk_causal_linear_attention,
                           fused_recurrent_causal_linear_attention, linear_attention,
                           naive_causal_linear_attention)


def explicit_causal(q, k, v, eps=1e-6):
    """Textbook definition, a loop over i with explicit prefix sums (fp64)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    ys = []
    for i in range(q.shape[1]):
        S = torch.einsum("bjhd,bjhm->bhdm", fk[:, :i + 1], v[:, :i + 1])
        z = fk[:, :i + 1].sum(1)
        ys.append(torch.einsum("bhd,bhdm->bhm", fq[:, i], S) / (torch.einsum("bhd,bhd->bh", fq[:, i], z)[..., None] + eps))
    return torch.stack(ys, 1)


SIZES = [(1, 1, 64, 64), (2, 3, 48, 48), (63, 4, 64, 32), (500, 2, 48, 48)]


@pytest.mark.parametrize("T,H,D,M", SIZES, ids=lambda x: str(x))
def test_causal_linear_attention_forms_agree(T, H, D, M):
    q, k = torch.randn(2, 2, T, H, D).unbind(0)
    v = torch.randn(2, T, H, M)
    y, s = naive_causal_linear_attention(q, k, v)
    if T <= 63:
        torch.testing.assert_close(y.double(), explicit_causal(q.double(), k.double(), v.double()), rtol=1e-5, atol=1e-5)
    for name, (y2, s2) in {"chunk": chunk_causal_linear_attention(q, k, v, chunk_size=16),
                           "step": fused_recurrent_causal_linear_attention(q, k, v)}.items():
        torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        for a, b in zip(s2, s):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 50), cut=st.floats(0, 1), H=st.integers(1, 3), D=st.integers(1, 8))
def test_causal_linear_attention_split_and_resume(T, cut, H, D):
    c = int(cut * T)
    q, k, v = torch.randn(3, 2, T, H, D, dtype=torch.float64).unbind(0)
    y, s = causal_linear_attention(q, k, v)
    ya, sa = causal_linear_attention(q[:, :c], k[:, :c], v[:, :c])
    yb, sb = causal_linear_attention(q[:, c:], k[:, c:], v[:, c:], state=sa)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y)
    for a, b in zip(sb, s):
        torch.testing.assert_close(a, b)


def test_noncausal_equals_last_causal_row_everywhere():
    q, k, v = torch.randn(3, 2, 9, 2, 4, dtype=torch.float64).unbind(0)
    y = linear_attention(q, k, v)
    _, s = causal_linear_attention(q, k, v)
    fq = F.elu(q) + 1
    ref = torch.einsum("bthd,bhdm->bthm", fq, s.kv) / (torch.einsum("bthd,bhd->bth", fq, s.k_sum)[..., None] + 1e-6)
    torch.testing.assert_close(y, ref)


def test_causal_linear_attention_gradcheck():
    q, k, v = (torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    s0 = LinearAttentionState(torch.rand(2, 2, 3, 3, dtype=torch.float64, requires_grad=True),
                              torch.rand(2, 2, 3, dtype=torch.float64, requires_grad=True))

    def f(q, k, v, a, b):
        y, s = causal_linear_attention(q, k, v, LinearAttentionState(a, b))
        return y, *s
    assert torch.autograd.gradcheck(f, (q, k, v, *s0))


@pytest.mark.parametrize("shapes,match", [
    (((2, 3, 4), (2, 3, 4), (2, 3, 4)), r"q: expected a 4-D tensor \[B, T, H, D\], got shape \(2, 3, 4\)"),
    (((2, 3, 2, 4), (2, 3, 2, 5), (2, 3, 2, 4)), r"k: expected the shape of q \(2, 3, 2, 4\), got shape \(2, 3, 2, 5\)"),
    (((2, 3, 2, 4), (2, 3, 2, 4), (2, 4, 2, 4)), r"v: expected shape \(2, 3, 2, M\), got shape \(2, 4, 2, 4\)"),
], ids=["rank", "k-shape", "v-shape"])
def test_linear_attention_bad_input(shapes, match):
    with pytest.raises(ValueError, match=match):
        causal_linear_attention(*(torch.randn(s) for s in shapes))


def test_linear_attention_bad_state():
    q = torch.randn(2, 3, 2, 4)
    with pytest.raises(ValueError, match=r"state.kv: expected shape \(2, 2, 4, 4\)"):
        causal_linear_attention(q, q, q, LinearAttentionState(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"state: expected a LinearAttentionState or a tuple of 2 tensors \(kv, "
                                         r"k_sum\), got a tensor of shape \(2, 2, 4, 4\)"):
        causal_linear_attention(q, q, q, torch.zeros(2, 2, 4, 4))   # unpacked, it made a state of two [2, 4, 4]
    torch.testing.assert_close(causal_linear_attention(q, q, q, [torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4)])[0],
                               causal_linear_attention(q, q, q)[0])
