"""The host code around the Triton kernels: which torch kernels a call launches besides its own, gradients that flow
through only some of an op's outputs (the others' stay None rather than zero-filled tensors), and a second
derivative refused by name."""
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import DEVICE, assert_close
from tests.ops.triton.test_triton_ops import leaf as reference_leaf
from tost_edge.ops import (CausalTSSAState, LinearAttentionState, causal_linear_attention,
                           causal_linear_attention_qkvpacked, causal_tssa, naive_causal_linear_attention,
                           naive_causal_tssa, tssa)

# aten ops that only describe or allocate memory: no kernel runs for them on a GPU
NO_KERNEL = {"empty", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "_reshape_alias",
             "as_strided", "alias", "detach", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "slice",
             "select", "split", "split_with_sizes", "unbind", "reshape", "is_same_size", "view_as"}


class KernelCount(TorchDispatchMode):
    """Counts, by name, the aten ops run inside it that may launch a kernel."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class NoLaunch:
    """A Triton kernel that launches nothing: kernel[grid](*args) returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None

    def warmup(self, *args, **kwargs):   # the register-cap and occupancy checks on a GPU: nothing compiled
        return None


@pytest.fixture
def no_launches(monkeypatch):
    """The ops' Triton kernels replaced by NoLaunch (their outputs are then left as allocated), so that only the
    host code runs."""
    from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, tssa as tt, utils
    monkeypatch.setattr(utils, "NAN_FILL", False)
    for key in list(tt.KERNELS):
        monkeypatch.setitem(tt.KERNELS, key, NoLaunch())
    for module in (tt, ct, la, tt.resident):
        for name, obj in list(vars(module).items()):
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction", "Autotuner"):
                monkeypatch.setattr(module, name, NoLaunch())


def leaf(*shape):
    return torch.rand(*shape, device=DEVICE).add_(0.5).requires_grad_()


def tssa_call():
    w, temp = leaf(2, 9, 96), leaf(4, 1)                      # temp as the official checkpoints hold it: [H, 1]
    return [w, temp], lambda: tssa(w, temp, 4, backend="triton")


def causal_call():
    w, temp, bias = leaf(2, 9, 96), leaf(4, 1), leaf(4, 16, 1)
    return [w, temp, bias], lambda: causal_tssa(w, temp, bias, 4, backend="triton")[0]


def causal_unbounded_call():
    w, temp = leaf(2, 9, 96), leaf(4, 1)                      # a position-free model: no denom_bias
    return [w, temp], lambda: causal_tssa(w, temp, None, 4, backend="triton")[0]


def linear_call():
    q, k, v = leaf(2, 9, 4, 16), leaf(2, 9, 4, 16), leaf(2, 9, 4, 16)
    return [q, k, v], lambda: causal_linear_attention(q, k, v, backend="triton")[0]


def linear_views_call():
    qkv = leaf(2, 9, 3, 4, 16)                       # one projection, as a language model's c_attn gives q, k, v
    q, k, v = qkv.unbind(2)
    return [qkv], lambda: causal_linear_attention(q, k, v, backend="triton")[0]


def linear_packed_call():
    qkv = leaf(2, 9, 3, 4, 16)
    return [qkv], lambda: causal_linear_attention_qkvpacked(qkv, backend="triton")[0]


# forward, then backward: one zero-filled workspace each way (TSSA's statistics, their gradients); causal TSSA's
# positions from 0, zero initial state and look-back counters in one buffer forward, one workspace backward; linear
# attention's zero initial state forward and the unused final state's zero gradient backward; q, k, v unbound from one projection
# are read where they lie (no copies), and autograd stacks their gradients back into the projection's, which the
# packed form writes where it lies (no stack)
@pytest.mark.parametrize("call,forward,backward", [
    (tssa_call, {"zeros": 1}, {"zeros": 1}),
    (causal_call, {"zeros": 1}, {"zeros": 1}),
    (causal_unbounded_call, {"zeros": 1}, {"zeros": 1}),
    (linear_call, {"zeros": 1}, {"new_zeros": 1}),
    (linear_views_call, {"zeros": 1}, {"new_zeros": 1, "stack": 1}),
    (linear_packed_call, {"zeros": 1}, {"new_zeros": 1}),
], ids=["tssa", "causal_tssa", "causal_tssa-position-free", "causal_linear_attention",
        "causal_linear_attention-qkv-views", "causal_linear_attention-qkvpacked"])
def test_torch_kernels_a_call_launches_besides_its_own(call, forward, backward, no_launches):
    """A training step launches these per layer: each costs host time and a launch on the GPU (the select that
    took an [H, 1] parameter to [H] cost a zero fill and a copy in the backward, and every unused output's gradient
    a zero-filled tensor)."""
    inputs, run = call()
    with KernelCount() as fwd:
        y = run()
    gy = torch.ones_like(y)
    with KernelCount() as bwd:
        torch.autograd.grad(y, inputs, gy)
    assert dict(fwd.ops) == forward
    assert dict(bwd.ops) == backward


@pytest.mark.parametrize("start, with_state, fills", [
    (0, False, {"zeros": 1}), (7, False, {"full": 1, "zeros": 1}), (0, True, {"zeros": 1}),
    (7, True, {"full": 1, "zeros": 1})], ids=["from-0", "from-7", "from-0-with-state", "from-7-with-state"])
def test_causal_tssa_forward_fills_one_buffer(start, with_state, fills, no_launches):
    """The zero initial state, the positions of a start at 0 and the look-back counters share one zero fill; the
    positions of another start are a fill of their own."""
    w, temp, bias = leaf(2, 9, 96), leaf(4, 1), leaf(4, 16, 1)
    state = CausalTSSAState(torch.rand(2, 4, 24), torch.rand(2, 4, 24), torch.rand(2, 4)) if with_state else None
    with KernelCount() as fwd:
        causal_tssa(w, temp, bias, 4, state, start, backend="triton")
    assert dict(fwd.ops) == fills


def check_some_outputs(outs, refs, inputs, used):
    """Gradients of a loss on the outputs named by `used` alone against the fp64 reference's."""
    g = torch.Generator(device="cpu").manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)).sum()
               for o, u in zip(outs, used) if u)
    g.manual_seed(3)
    loss_ref = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
                   for o, u in zip(refs, used) if u)
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    want = torch.autograd.grad(loss_ref, inputs, allow_unused=True)
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None or not b.abs().max() > 0:
            assert a is None or not a.abs().max() > 0, f"input {i}: a gradient where the reference has none"
            continue
        assert_close(f"input {i}", b, a, 3e-3, atol=1e-6)


SOME = [(True, False, False, False), (False, True, True, False), (False, False, False, True)]
SOME_IDS = ["y-only", "final-sums-of-squares-only", "final-sum-pi-only"]


@pytest.mark.parametrize("used", SOME, ids=SOME_IDS)
def test_causal_tssa_gradients_through_some_outputs(used):
    B, T, H, D = 2, 11, 2, 48
    w, temp, bias = reference_leaf(B, T, H * D), reference_leaf(H, 1, rand=True, offset=0.5), \
        reference_leaf(H, T + 3, 1)
    s0 = [reference_leaf(*shape, rand=True, offset=0.5) for shape in ((B, H, D), (B, H, D), (B, H))]
    y, s = causal_tssa(w, temp, bias, H, CausalTSSAState(*s0), 2, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H,
                               CausalTSSAState(*[x.double() for x in s0]), 2)
    check_some_outputs([y, *s], [yr, *sr], [w, temp, bias, *s0], used)


@pytest.mark.parametrize("used", [(True, False, False), (False, True, False), (False, False, True)],
                         ids=["y-only", "final-kv-only", "final-k-sum-only"])
def test_causal_linear_attention_gradients_through_some_outputs(used):
    B, T, H, D = 2, 11, 2, 16
    q, k, v = (reference_leaf(B, T, H, D) for _ in range(3))
    s0 = [reference_leaf(*shape, rand=True, offset=0.5) for shape in ((B, H, D, D), (B, H, D))]
    y, s = causal_linear_attention(q, k, v, LinearAttentionState(*s0), backend="triton")
    yr, sr = naive_causal_linear_attention(q.double(), k.double(), v.double(),
                                           LinearAttentionState(*[x.double() for x in s0]))
    check_some_outputs([y, *s], [yr, *sr], [q, k, v, *s0], used)


@pytest.mark.parametrize("call", [tssa_call, causal_call, linear_call, linear_packed_call],
                         ids=["tssa", "causal_tssa", "causal_linear_attention", "causal_linear_attention-qkvpacked"])
def test_a_second_derivative_is_refused_clearly(call):
    """The kernels' gradients are constants to autograd: under create_graph=True they keep their values and stay
    tied to the inputs, and differentiating them again (a gradient penalty) is an error naming the op, never a
    silent zero for its share."""
    inputs, run = call()
    y = run()
    gy = torch.rand_like(y)
    plain = torch.autograd.grad(y, inputs, gy, retain_graph=True)
    first = torch.autograd.grad(y, inputs, gy, create_graph=True)
    for a, b in zip(first, plain):
        assert_close("gradient", b.double(), a.detach(), 1e-6)   # (a GPU's atomic sums may differ in the last bits)
        assert a.requires_grad
    with pytest.raises(RuntimeError, match="backend='triton' has no second derivative"):
        torch.autograd.grad(sum(g.square().sum() for g in first), inputs)
