"""Under torch.use_deterministic_algorithms(True) the Triton ops run schemes whose sums across programs are taken
in a fixed order (TSSA: each slice's sums a row of its own, summed by the host; causal TSSA: the three-pass scheme,
d temp a row a slice, d denom_bias from the stored d energy), so a run's results are the same bits every time: the
same values as the fp64 reference, through those rows (checked here, where the interpreter's atomics would hide a
shared row), and bitwise equal across runs on a GPU."""
import pytest
import torch

from tests.conftest import DEVICE, assert_close
from tests.ops.triton.test_triton_ops import check_causal_with_state, check_tssa, leaf
from tost_edge.ops import causal_linear_attention, causal_tssa, tssa
from tost_edge.ops.triton import causal_tssa as ct
from tost_edge.ops.triton import tssa as tt
from tost_edge.ops.triton.utils import deterministic_algorithms


@pytest.fixture
def deterministic():
    with deterministic_algorithms():
        yield


def spy(monkeypatch, module, name):
    """Every buffer module.name returns, kept for the test."""
    made, real = [], getattr(module, name)

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        made.append(out)
        return out
    monkeypatch.setattr(module, name, wrapped)
    return made


def test_tssa_sums_a_row_a_slice(deterministic, monkeypatch):
    """Against fp64 (forward, dw, dtemp) with 3 slices a batch element, and each slice's sums in a row of its own:
    w^2 summed over each slice's tokens is that slice's row of S's partials."""
    monkeypatch.setattr(tt, "PROGRAMS", 6)                     # B2: 3 slices a batch element
    monkeypatch.setattr(tt, "RESIDENT", True)                  # (what determinism overrides)
    made = spy(monkeypatch, tt, "_partials")
    w, temp = leaf(2, 300, 4 * 48), leaf(4, 1, rand=True, offset=0.5)
    check_tssa(w, temp, 4)
    assert tt._plan()[6] == 1 and tt.last_run == {"forward": "passes", "backward": "passes"}
    pS = made[0][0]                                            # [rows, B, C]
    used = (pS != 0).any(-1)                                   # [rows, B]
    assert used.sum(0).tolist() == [3, 3], used                # a row a slice, not one shared row
    x = w.detach().double().square()
    per = 112                           # tokens a slice: tiles of 16 (the interpreter's config), 300 in 3 slices
    for s in range(3):
        assert_close(f"S rows {s}", x[:, s * per:(s + 1) * per].sum(1), pS[s], 1e-6)
    for name, part in zip(["A", "P", "G", "dS", "dtemp"], [*made[0][1:], *made[1]]):   # forward 2, backward 1, 2
        assert (part != 0).any(-1).sum(0).tolist() == [3, 3], name


@pytest.mark.parametrize("pos", [0, 4, "tensor"], ids=["pos0", "pos4", "pos-per-sequence"])
def test_causal_tssa_three_passes_and_rows(deterministic, monkeypatch, pos):
    """Against fp64 (output, final state, every gradient) at several slices a sequence, and d temp through a row a
    slice: the rows hold different slices' sums."""
    monkeypatch.setattr(ct, "FUSED", True)                     # (what determinism overrides)
    rows = spy(monkeypatch, ct, "_slice_rows")
    pos = torch.tensor([0, 5, 2], device=DEVICE) if pos == "tensor" else pos    # (the bias covers T + 5)
    check_causal_with_state(3, 70, 3, 16, pos)
    plan = ct._plan(3, 70, 3, 16, 4)
    assert plan[6] == 0 and plan[20] == 1 and plan[3] > 1, plan         # three passes, several slices
    (gT,) = rows
    assert gT.shape == (3 * plan[3], 3) and (gT != 0).any(-1).sum() > 3, gT   # not all in one row a sequence


def test_linear_attention_runs_as_is(deterministic):
    q = leaf(1, 4, 2, 16)
    causal_linear_attention(q, q, q, backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="atomics' order varies only on a GPU")
@pytest.mark.parametrize("op", ["tssa", "causal_tssa"])
def test_bitwise_the_same_on_gpu(deterministic, op):
    """Two runs at a benchmark-sized shape (thousands of programs whose sums would meet in atomics) give the same
    bits: outputs and gradients."""
    torch.manual_seed(0)
    if op == "tssa":
        w = torch.randn(8, 4096, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        params = [(torch.rand(8, device="cuda") + 0.5).requires_grad_()]
        fn = lambda: tssa(w, params[0], 8, backend="triton")  # noqa: E731
    else:
        w = torch.randn(4, 4096, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        params = [(torch.rand(12, device="cuda") + 0.5).requires_grad_(),
                  (0.01 * torch.randn(12, 4096, device="cuda")).requires_grad_()]
        fn = lambda: causal_tssa(w, params[0], params[1], 12, backend="triton")[0]  # noqa: E731
    dy = torch.randn_like(w)
    runs = []
    for _ in range(2):
        y = fn()
        grads = torch.autograd.grad(y, [w, *params], dy)
        runs.append([y, *grads])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
