"""The Triton kernels on packed sequences (cu_seqlens): causal TSSA's one launch a direction walks every sequence,
each from its own state and position (slices past a sequence's end walk nothing); causal linear attention's walking
kernels take a program per (sequence, head); bidirectional TSSA's passes a program per (sequence, slice). Against
the fp64 reference run one sequence at a time: output, final states and every gradient."""
import pytest
import torch

from tests.conftest import DEVICE, assert_close
from tests.ops.triton.test_triton_ops import (TSSA_LAUNCHES, check_causal_against, check_linear_against, grads, leaf,
                                             set_tssa_launch)
from tost_edge.ops import (CausalTSSAState, LinearAttentionState, causal_linear_attention,
                           causal_linear_attention_qkvpacked, causal_tssa, naive_causal_linear_attention_packed,
                           naive_causal_tssa_packed, naive_tssa_packed, tssa)
from tost_edge.ops.packing import offsets_of as offsets
from tost_edge.ops.triton import causal_tssa as ct
from tost_edge.ops.triton import linear_attention as la
from tost_edge.ops.triton import tssa as tt
from tost_edge.ops.triton.utils import deterministic_algorithms


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


@pytest.mark.parametrize("walk", ["tiled", "walked"])
def test_packed_under_deterministic_mode(walk, monkeypatch):
    """Under torch.use_deterministic_algorithms(True) packed sequences run the three-pass scheme (its scans between
    launches in a fixed order; d temp a row a slice; d denom_bias from the stored d energy at each token's own
    position): against fp64 one sequence at a time, and two runs bit for bit."""
    monkeypatch.setattr(ct, "TILED", walk == "tiled")
    monkeypatch.setattr(ct, "BWD_TILED", walk == "tiled")
    lengths, H, D = [1, 63, 0, 130, 5], 3, 48
    cu, N = offsets(lengths), len(lengths)
    w, temp, bias = leaf(1, cu[-1], H * D), leaf(H, rand=True, offset=0.5), leaf(H, 150, scale=0.1)
    s0 = [leaf(N, H, D, rand=True), leaf(N, H, D, rand=True), leaf(N, H, rand=True)]
    pos = torch.tensor([0, 9, 2, 17, 4], device=DEVICE)
    yr, sr = naive_causal_tssa_packed(w.double(), temp.double(), bias.double(), H, cu,
                                      CausalTSSAState(*[x.double() for x in s0]), pos)
    with deterministic_algorithms():
        run = lambda: causal_tssa(w, temp, bias, H, CausalTSSAState(*s0), pos, backend="triton",  # noqa: E731
                                  cu_seqlens=cu)
        check_causal_against(run(), (yr, sr), [w, temp, bias, *s0])
        runs = [run() for _ in range(2)]
        g = [grads([y, *s], [w, temp, bias, *s0])[0] for y, s in runs]
    assert ct._plan(N, 130, H, D, 4, torch.device(DEVICE), packed=True)[6] == 1      # (outside: the fused scheme)
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(*g):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lengths,D,M,H,split,parallel", [
    ([1, 63, 0, 130, 5], 48, 48, 3, 1, False), ([130, 7], 64, 32, 2, 2, False), ([1, 64], 64, 64, 4, 1, True)],
    ids=["L1-63-0-130-5-D48-H3", "L130-7-D64-M32-H2-split2", "L1-64-D64-H4-chunks-in-parallel-set"])
def test_linear_packed_against_fp64_one_sequence_at_a_time(lengths, D, M, H, split, parallel, monkeypatch):
    """Sequences of odd lengths (empty, one token, a chunk and a token past two), from random states; SPLIT's
    kernels (blocks of the key or value columns) too. PARALLEL set: packed sequences run the walking kernels."""
    monkeypatch.setattr(la, "SPLIT", split)
    monkeypatch.setattr(la, "PARALLEL", parallel)
    cu, N = offsets(lengths), len(lengths)
    q, k, v = leaf(1, cu[-1], H, D), leaf(1, cu[-1], H, D), leaf(1, cu[-1], H, M)
    s0 = [leaf(N, H, D, M, rand=True), leaf(N, H, D, rand=True)]
    y, s = causal_linear_attention(q, k, v, LinearAttentionState(*s0), backend="triton",
                                   cu_seqlens=torch.tensor(cu, device=DEVICE))
    yr, sr = naive_causal_linear_attention_packed(q.double(), k.double(), v.double(), cu,
                                                  LinearAttentionState(*[x.double() for x in s0]))
    check_linear_against((y, s), (yr, sr), [q, k, v, *s0], ["q", "k", "v", "kv0", "k_sum0"])


@pytest.mark.parametrize("split", [1, 2], ids=["one-program", "split2"])
def test_linear_qkvpacked_packed_writes_one_gradient(split, monkeypatch):
    """A model's projection [1, total, 3, H, D] of packed sequences: read where it lies, its gradient one tensor
    written where it lies (no stacking of d q, d k, d v)."""
    monkeypatch.setattr(la, "SPLIT", split)
    cu = offsets([37, 0, 70])
    qkv = leaf(1, cu[-1], 3, 2, 32)
    y, s = causal_linear_attention_qkvpacked(qkv, backend="triton", cu_seqlens=cu)
    assert "Unbind" not in type(y.grad_fn.next_functions[0][0]).__name__
    q, k, v = qkv.double().unbind(2)
    check_linear_against((y, s), naive_causal_linear_attention_packed(q, k, v, cu), [qkv], ["qkv"])


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's case (on a GPU the kernels run in bf16)")
def test_linear_packed_bf16_under_the_interpreter():
    cu = offsets([9, 30])
    q, k, v = (torch.randn(1, cu[-1], 2, 16).to(torch.bfloat16) for _ in range(3))
    with pytest.warns(UserWarning, match="no bfloat16 dot"):
        y, s = causal_linear_attention(q, k, v, backend="triton", cu_seqlens=cu)
    yr, sr = naive_causal_linear_attention_packed(q.double(), k.double(), v.double(), cu)
    assert y.dtype == torch.bfloat16 and s.kv.shape == (2, 2, 16, 16)
    assert_close("y", yr, y, 1e-2)


def test_linear_packed_under_deterministic_mode():
    """Linear attention's walking kernels sum in a fixed order (no atomics): packed calls run under
    torch.use_deterministic_algorithms(True), two runs bit for bit."""
    cu = offsets([20, 45])
    q, k, v = leaf(1, cu[-1], 2, 16), leaf(1, cu[-1], 2, 16), leaf(1, cu[-1], 2, 16)
    with deterministic_algorithms():
        runs = [causal_linear_attention(q, k, v, backend="triton", cu_seqlens=cu) for _ in range(2)]
        grads_of = [torch.autograd.grad(y.square().sum() + s.kv.sum(), [q, k, v]) for y, s in runs]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1].kv, runs[1][1].kv)
    for a, b in zip(*grads_of):
        assert torch.equal(a, b)


def check_tssa_packed(lengths, D, H):
    """Packed TSSA against the fp64 reference run one sequence at a time: output, dw and d temp."""
    cu = offsets(lengths)
    w, temp = leaf(1, cu[-1], H * D), leaf(H, 1, rand=True, offset=0.5)
    y = tssa(w, temp, H, backend="triton", cu_seqlens=torch.tensor(cu, device=DEVICE))
    yr = naive_tssa_packed(w.double(), temp.double(), H, cu)
    assert_close("y", yr, y, 1e-5)
    (dw, dt), _ = grads([y], [w, temp])
    (dwr, dtr), _ = grads([yr], [w, temp])
    assert_close("dw", dwr, dw, 2e-5, atol=1e-6)
    assert_close("dtemp", dtr, dt, 2e-3, atol=1e-6)


PACKED_TSSA = [([1, 63, 0, 130, 5], 48, 3, launch) for launch in TSSA_LAUNCHES] + \
    [([500, 7], 64, 2, "launch-per-pass-prefetch"), ([1], 64, 4, "launch-per-pass")]


@pytest.mark.parametrize("lengths,D,H,launch", PACKED_TSSA,
                         ids=[f"L{'-'.join(map(str, n))}-D{d}-H{h}-{launch}" for n, d, h, launch in PACKED_TSSA])
def test_tssa_packed_against_fp64_one_sequence_at_a_time(lengths, D, H, launch, monkeypatch):
    """Bidirectional TSSA of packed sequences: each sequence's statistics its own, one launch a pass for all of them.
    Whatever scheme the settings ask for, packed calls run the passes (their slices lie within one sequence); the
    passes' own settings (PINGPONG, PASS_STAGES, PASS_PREFETCH, OUT_SLICES, PDL) apply."""
    set_tssa_launch(launch, monkeypatch)
    check_tssa_packed(lengths, D, H)
    assert tt.last_run == {"forward": "passes", "backward": "passes"}


@pytest.mark.parametrize("setting,value", [("SAVE_PI", False), ("PARTS", False), ("PROGRAMS", 7)],
                         ids=["pi-recomputed", "D48-padded-to-64", "several-slices-a-sequence"])
def test_tssa_packed_settings(setting, value, monkeypatch):
    monkeypatch.setattr(tt, setting, value)
    check_tssa_packed([70, 1, 0, 33], 48, 2)


def test_tssa_packed_under_deterministic_mode(monkeypatch):
    """Each slice's sums a row of its own (the host sums them in order): against fp64, two runs bit for bit."""
    monkeypatch.setattr(tt, "PROGRAMS", 6)                      # 2 sequences: 3 slices each
    lengths, H, D = [300, 0, 41], 2, 48
    with deterministic_algorithms():
        check_tssa_packed(lengths, D, H)
        cu = offsets(lengths)
        w, temp = leaf(1, cu[-1], H * D), leaf(H, rand=True, offset=0.5)
        runs = [tssa(w, temp, H, backend="triton", cu_seqlens=cu) for _ in range(2)]
        g = [grads([y], [w, temp])[0] for y in runs]
    assert torch.equal(runs[0], runs[1])
    for a, b in zip(*g):
        assert torch.equal(a, b)


def test_tssa_packed_checks():
    w = leaf(1, 10, 32)
    with pytest.raises(ValueError, match=r"max_seqlen: expected at least the longest sequence's length 6, got 4"):
        tssa(w, torch.ones(2, device=DEVICE), 2, backend="triton", cu_seqlens=[0, 4, 10], max_seqlen=4)
    with pytest.raises(ValueError, match=r"w.shape\[-1\] \(C\)"):
        tssa(leaf(1, 10, 30), torch.ones(4, device=DEVICE), 4, backend="triton", cu_seqlens=[0, 10])
    y = tssa(leaf(1, 0, 32), torch.ones(2, device=DEVICE), 2, backend="triton", cu_seqlens=[0, 0, 0])
    assert y.shape == (1, 0, 32)


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_packed_model_makes_the_offsets_device_copy_once_a_call(name, monkeypatch):
    """A model checks its documents' offsets once a call; every layer's kernels take the same int32 copy."""
    from tost_edge.ops import packing
    from tost_edge.models import create
    made, real = [], packing.device_offsets
    for module in (ct, la, tt):
        monkeypatch.setattr(module, "device_offsets", lambda cu, dev: made.append(real(cu, dev)) or made[-1])
    model = create(name, n_layer=3, n_embd=32, n_head=2).to(DEVICE).set_backend("triton")
    model(torch.randint(0, 256, (1, 20), device=DEVICE), cu_seqlens=[0, 7, 20])
    assert len(made) == 3 and all(t is made[0] for t in made)
