import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from tost_edge.ops import (CausalTSSAState, causal_tssa, chunk_causal_tssa, fused_recurrent_causal_tssa,
                           naive_causal_tssa)


def official_causal_tssa(w, temp, denom_bias, H):
    """The official CausalSelfAttention_TSSA core (between c_attn and c_proj), in its 'b h t d' layout."""
    B, T, C = w.shape
    w = w.view(B, T, H, C // H).transpose(1, 2)
    w_sq = w ** 2
    denom = torch.cumsum(w_sq, dim=-2).clamp_min(1e-12)
    w_normed = (w_sq / denom) + denom_bias[:, :T, :]
    Pi = F.softmax(torch.sum(w_normed, dim=-1) * temp, dim=1)
    dots = torch.cumsum(w_sq * Pi.unsqueeze(-1), dim=-2) / (Pi.cumsum(dim=-1) + 1e-8).unsqueeze(-1)
    y = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
    return y.transpose(1, 2).reshape(B, T, C)


def make(B, T, H, D, tmax=None, dtype=torch.float64):
    w = torch.randn(B, T, H * D, dtype=dtype)
    temp = torch.rand(H, 1, dtype=dtype) + 0.5
    bias = 0.1 * torch.randn(H, tmax or max(T, 1), 1, dtype=dtype)
    return w, temp, bias


SIZES = [(1, 1, 64), (2, 3, 48), (63, 4, 64), (500, 3, 48)]


@pytest.mark.parametrize("T,H,D", SIZES, ids=lambda x: str(x))
def test_causal_tssa_matches_official_formula(T, H, D):
    w, temp, bias = make(2, T, H, D)
    ref = official_causal_tssa(w, temp, bias, H)
    y, _ = naive_causal_tssa(w, temp, bias, H)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    y32, _ = causal_tssa(w.float(), temp.float(), bias.float(), H)
    torch.testing.assert_close(y32.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,H,D", SIZES + [(2, 1, 48)], ids=lambda x: str(x))
def test_causal_tssa_parallel_chunked_step_agree_fp32(T, H, D):
    w, temp, bias = make(2, T, H, D, dtype=torch.float32)
    y, s = naive_causal_tssa(w, temp, bias, H)
    for name, (y2, s2) in {"chunk16": chunk_causal_tssa(w, temp, bias, H, chunk_size=16),
                           "chunk7": chunk_causal_tssa(w, temp, bias, H, chunk_size=7),
                           "step": fused_recurrent_causal_tssa(w, temp, bias, H)}.items():
        torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} y: {m}")
        for q, a, b in zip(CausalTSSAState._fields, s2, s):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} {q}: {m}")
        assert all(t.dtype == torch.float32 for t in s2)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(2, 80), cut=st.floats(0.0, 1.0), H=st.integers(1, 4), D=st.sampled_from([1, 5, 8]))
def test_causal_tssa_split_and_resume(T, cut, H, D):
    c = int(cut * T)
    w, temp, bias = make(2, T, H, D, tmax=T + 3)
    y, s = naive_causal_tssa(w, temp, bias, H)
    ya, sa = naive_causal_tssa(w[:, :c], temp, bias, H)
    yb, sb = naive_causal_tssa(w[:, c:], temp, bias, H, state=sa, pos0=c)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y, rtol=1e-10, atol=1e-12)
    for a, b in zip(sb, s):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_causal_tssa_per_sequence_positions():
    w, temp, bias = make(3, 6, 2, 4, tmax=20)
    pos = torch.tensor([0, 5, 11])
    y, _ = naive_causal_tssa(w, temp, bias, 2, pos0=pos)
    for b in range(3):
        yb, _ = naive_causal_tssa(w[b:b + 1], temp, bias, 2, pos0=int(pos[b]))
        torch.testing.assert_close(y[b:b + 1], yb)


def test_causal_tssa_without_position_table():
    w, temp, _ = make(2, 9, 2, 4)
    y, _ = naive_causal_tssa(w, temp, None, 2, pos0=1000)
    y0, _ = naive_causal_tssa(w, temp, torch.zeros(2, 2000, dtype=w.dtype), 2, pos0=1000)
    torch.testing.assert_close(y, y0)


def test_causal_tssa_gradcheck():
    w, temp, bias = make(2, 5, 3, 2)
    st0 = CausalTSSAState(torch.rand(2, 3, 2, dtype=torch.float64), torch.rand(2, 3, 2, dtype=torch.float64),
                          torch.rand(2, 3, dtype=torch.float64))
    args = [w, temp, bias, *st0]
    for a in args:
        a.requires_grad_(True)

    def f(w, temp, bias, s1, s2, s3):
        y, s = naive_causal_tssa(w, temp, bias, 3, CausalTSSAState(s1, s2, s3), pos0=0)
        return y, *s
    assert torch.autograd.gradcheck(f, tuple(args))


@pytest.mark.parametrize("kwargs,match", [
    (dict(pos0=4), r"pos0 \+ T: expected at most denom_bias.shape\[1\] = 8 .*got 9"),
    (dict(state=CausalTSSAState(torch.zeros(2, 2, 3), torch.zeros(2, 2, 4), torch.zeros(2, 2))),
     r"state.sum_wsq: expected shape \(2, 2, 4\), got shape \(2, 2, 3\)"),
    (dict(state=CausalTSSAState(torch.zeros(2, 2, 4).half(), torch.zeros(2, 2, 4), torch.zeros(2, 2))),
     r"state.sum_wsq: expected float32"),
    (dict(pos0=torch.zeros(3, dtype=torch.long)), r"pos0: expected an int or an integer tensor of shape \(2,\)"),
    (dict(state=torch.zeros(3, 2, 2, 4)), r"state: expected a CausalTSSAState or a tuple of 3 tensors \(sum_wsq, "
     r"sum_pi_wsq, sum_pi\), got a tensor of shape \(3, 2, 2, 4\)"),
    (dict(state=(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))), r"state: expected .* got a tuple of 2$"),
    (dict(state=[torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), 0.0]), r"state: expected .* got a list of Tensor, "
     r"Tensor, float"),
], ids=["beyond-position-table", "state-shape", "state-dtype", "pos0-shape", "state-a-tensor", "state-two-of-three",
        "state-not-tensors"])
def test_causal_tssa_bad_input(kwargs, match):
    w, temp, bias = make(2, 5, 2, 4, tmax=8, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        causal_tssa(w, temp, bias, 2, **kwargs)


def test_causal_tssa_bias_shape_error():
    w, temp, _ = make(1, 3, 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"denom_bias: expected shape \(2, Tmax\) or \(2, Tmax, 1\)"):
        causal_tssa(w, temp, torch.zeros(3, 8), 2)
