import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from tost_edge.ops import naive_tssa, tssa


def official_tssa(w, temp, H):
    """The official AttentionTSSA core, in its own 'b h n d' layout."""
    B, N, C = w.shape
    w = w.view(B, N, H, C // H).transpose(1, 2)
    w_sq = F.normalize(w, dim=-2) ** 2
    Pi = torch.softmax(torch.sum(w_sq, dim=-1) * temp, dim=1)
    dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w ** 2)
    out = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
    return out.transpose(1, 2).reshape(B, N, C)


@pytest.mark.parametrize("N", [1, 2, 63, 500], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("H,D", [(1, 64), (3, 48), (4, 64)], ids=lambda x: str(x))
def test_tssa_matches_official_formula_in_fp64(N, H, D):
    w = torch.randn(2, N, H * D, dtype=torch.float64)
    temp = torch.rand(H, 1, dtype=torch.float64) + 0.5
    ref = official_tssa(w, temp, H)
    torch.testing.assert_close(naive_tssa(w, temp, H), ref, rtol=1e-12, atol=1e-12)
    y32 = tssa(w.float(), temp.float(), H)
    torch.testing.assert_close(y32.double(), ref, rtol=1e-5, atol=1e-6)


def test_tssa_temp_shapes_agree():
    w, temp = torch.randn(2, 5, 12), torch.randn(3)
    torch.testing.assert_close(tssa(w, temp, 3), tssa(w, temp[:, None], 3))


def test_tssa_half_input_returns_half_computed_in_fp32():
    w, temp = torch.randn(2, 9, 16), torch.ones(2)
    y = tssa(w.half(), temp, 2)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), tssa(w.half().float(), temp, 2), rtol=1e-3, atol=1e-3)


def test_tssa_gradcheck():
    w = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    temp = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: naive_tssa(a, b, 3), (w, temp))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 40), H=st.integers(1, 4), D=st.integers(1, 9))
def test_tssa_property_matches_official(B, N, H, D):
    w = torch.randn(B, N, H * D, dtype=torch.float64)
    temp = torch.randn(H, 1, dtype=torch.float64)
    torch.testing.assert_close(naive_tssa(w, temp, H), official_tssa(w, temp, H), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(2, 3), torch.ones(2), 2), r"w: expected a 3-D tensor \[B, N, C\], got shape \(2, 3\)"),
    ((torch.randn(2, 3, 10), torch.ones(3), 3), r"C\).*divisible by num_heads=3, got 10"),
    ((torch.randn(2, 3, 12), torch.ones(4), 3), r"temp: expected shape \(3,\) or \(3, 1\), got shape \(4,\)"),
    ((torch.ones(2, 3, 12, dtype=torch.long), torch.ones(3), 3), r"w: expected a floating-point tensor"),
], ids=["rank", "divisible", "temp-shape", "dtype"])
def test_tssa_bad_input_names_argument(args, match):
    with pytest.raises(ValueError, match=match):
        tssa(*args)
