from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import DEVICE, assert_close
from tost_edge.ops import (CausalTSSAState, LinearAttentionState, causal_linear_attention,
                           causal_linear_attention_qkvpacked, causal_tssa, naive_causal_linear_attention,
                           naive_causal_tssa, naive_tssa, tssa)

SIZES = [(1, 48, 3), (63, 64, 4), (130, 48, 2), (500, 64, 2)]          # (T or N, D, H)
IDS = [f"T{t}-D{d}-H{h}" for t, d, h in SIZES]


def grads(outputs, inputs, seed=1):
    g = torch.Generator(device="cpu").manual_seed(seed)
    cot = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, inputs, cot), cot


def leaf(*shape, scale=1.0, offset=0.0, rand=False):
    x = (torch.rand(*shape, dtype=torch.float64) if rand else torch.randn(*shape, dtype=torch.float64))
    return (x * scale + offset).to(DEVICE).float().requires_grad_()


def check_tssa(w, temp, H):
    """Triton TSSA output, dw and dtemp against the fp64 reference."""
    y = tssa(w, temp, H, backend="triton")
    yr = naive_tssa(w.double(), temp.double(), H)
    assert_close("y", yr, y, 1e-5)
    (dw, dt), _ = grads([y], [w, temp])
    (dwr, dtr), _ = grads([yr], [w, temp])
    assert_close("dw", dwr, dw, 2e-5, atol=1e-6)
    assert_close("dtemp", dtr, dt, 2e-3, atol=1e-6)


def check_causal_with_state(B, T, H, D, pos):
    """Triton causal TSSA from a random initial state at positions pos: output, final state and every gradient
    (w, temp, denom_bias, initial state) against the fp64 reference."""
    w, temp, bias = leaf(B, T, H * D), leaf(H, rand=True, offset=0.5), leaf(H, T + 5, scale=0.1)
    s0 = [leaf(B, H, D, rand=True), leaf(B, H, D, rand=True), leaf(B, H, rand=True)]
    y, s = causal_tssa(w, temp, bias, H, CausalTSSAState(*s0), pos, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H,
                               CausalTSSAState(*[x.double() for x in s0]), pos)
    check_causal_against((y, s), (yr, sr), [w, temp, bias, *s0])


def check_causal_against(out, ref, inputs):
    """Causal TSSA's (y, final state) against the fp64 reference's, then every gradient with respect to inputs (w,
    temp, denom_bias, the initial state's three sums)."""
    check_state_op_against(out, ref, inputs, ["w", "temp", "bias", "S0", "A0", "P0"],
                           lambda name: 3e-3 if name in ("temp", "bias") else 1e-4)


def check_linear_against(out, ref, inputs, names):
    """Causal linear attention's (y, final state) against the fp64 reference's, then every gradient with respect to
    inputs (named `names`)."""
    check_state_op_against(out, ref, inputs, names, lambda name: 1e-4)


def check_state_op_against(out, ref, inputs, names, grad_tol):
    """(y, final state: a NamedTuple) against the reference's, then the gradients of both with respect to inputs."""
    (y, s), (yr, sr) = out, ref
    assert_close("y", yr, y, 1e-5)
    for name, a, b in zip(s._fields, s, sr):
        assert_close(f"state.{name}", b, a, 1e-5)
    g, _ = grads([y, *s], inputs)
    gr, _ = grads([yr, *sr], inputs)
    for name, a, b in zip(names, g, gr):
        assert_close(f"d{name}", b, a, grad_tol(name), atol=1e-6)


@pytest.mark.parametrize("N,D,H", SIZES, ids=IDS)
def test_tssa_forward_and_gradients(N, D, H, tssa_launch):
    check_tssa(leaf(2, N, H * D), leaf(H, 1, rand=True, offset=0.5), H)


@pytest.mark.parametrize("N,D,H", [(5, 32, 32), (3, 128, 2), (17, 48, 12)], ids=["D32-H32", "D128-H2", "D48-H12"])
def test_tssa_head_sizes_and_counts(N, D, H, tssa_launch):
    """The supported head sizes (32, 48, 64, 128) and up to 32 heads, including non-power-of-two counts."""
    check_tssa(leaf(1, N, H * D), leaf(H, rand=True, offset=0.5), H)


@pytest.mark.parametrize("T,D,H", [(9, 32, 20), (6, 128, 3)], ids=["D32-H20", "D128-H3"])
def test_causal_head_sizes_and_counts(T, D, H, causal_launch):
    w, temp, bias = leaf(2, T, H * D), leaf(H, rand=True, offset=0.5), leaf(H, T, scale=0.1)
    y, s = causal_tssa(w, temp, bias, H, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H)
    assert_close("y", yr, y, 1e-5)
    g, _ = grads([y, *s], [w, temp, bias])
    gr, _ = grads([yr, *sr], [w, temp, bias])
    for name, a, b in zip(["w", "temp", "denom_bias"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name != "w" else 1e-4, atol=1e-6)


TSSA_LAUNCHES = ["launch-per-pass", "launch-per-pass-pingpong", "launch-per-pass-pipelined", "launch-per-pass-prefetch",
                 "launch-per-pass-pdl", "persistent", "resident"]


def set_tssa_launch(launch: str, monkeypatch):
    """TSSA one launch per pass (all in order, or the middle pass of each direction taking its slices from the end:
    PINGPONG, or each pass's loop loading a tile ahead: through shared memory, PASS_STAGES 2, or into registers,
    PASS_PREFETCH, with few programs so that a slice takes several trips and most end before the sequence does, and
    the output pass walking slices too: OUT_SLICES);
    all passes in one launch of persistent programs taking work items by ticket; or one launch per direction with
    each program holding its slice of w (and dy) across the passes. "-pdl": the passes after the first of each
    direction launched while the one before finishes (programmatic dependent launch, sm_90 and later only)."""
    from tost_edge.ops.triton import tssa as tt
    if launch == "launch-per-pass-pdl":
        if DEVICE != "cuda" or torch.cuda.get_device_capability()[0] < 9:
            pytest.skip("programmatic dependent launch needs a GPU of compute capability 9.0 or later")
        monkeypatch.setattr(tt, "PDL", True)
    monkeypatch.setattr(tt, "PERSISTENT", launch == "persistent")
    monkeypatch.setattr(tt, "RESIDENT", launch == "resident")
    monkeypatch.setattr(tt, "PINGPONG", launch == "launch-per-pass-pingpong")
    monkeypatch.setattr(tt, "PASS_STAGES", 2 if launch == "launch-per-pass-pipelined" else 1)
    if launch in ("launch-per-pass-prefetch", "launch-per-pass-pdl"):
        monkeypatch.setattr(tt, "PASS_PREFETCH", True)
        monkeypatch.setattr(tt, "OUT_SLICES", True)
        monkeypatch.setattr(tt, "PROGRAMS", 5)   # N500: slices of 6, 6 and 4 tiles of 32 tokens (N130: 2, 2, 1)


@pytest.fixture(params=TSSA_LAUNCHES)
def tssa_launch(request, monkeypatch):
    """The TSSA scheme a test runs under (set_tssa_launch), checked to be the one that ran."""
    from tost_edge.ops.triton import tssa as tt
    set_tssa_launch(request.param, monkeypatch)
    yield request.param
    expected = "passes" if request.param.startswith("launch-per-pass") else request.param
    assert tt.last_run == {"forward": expected, "backward": expected}


@pytest.fixture(params=[(False, False, False), (True, False, False), (True, True, False), (True, False, True)],
                ids=["three-passes", "fused", "fused-tiled", "chunked"])
def causal_launch(request, monkeypatch):
    """The causal TSSA kernels one launch per pass (slices chained by a scan kernel) or fused into one launch per
    direction (slices chained by look-back); their slices walked token by token or a tile of tokens at a time (the
    backward's tiles smaller than the forward's); or CHUNKED: a program per group of heads and chunk of 16 tokens
    (several a sequence here, the last one short), walked in tiles of 4 tokens forward and 2 backward."""
    from tost_edge.ops.triton import causal_tssa as ct
    fused, tiled, chunked = request.param
    monkeypatch.setattr(ct, "FUSED", fused)
    monkeypatch.setattr(ct, "TILED", tiled)
    monkeypatch.setattr(ct, "BWD_TILED", tiled)
    monkeypatch.setattr(ct, "CHUNKED", chunked)
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", 16)
    if tiled:
        monkeypatch.setattr(ct, "BWD_UNROLL", 2)
    return request.param


@pytest.mark.parametrize("T,D,H", SIZES, ids=IDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
def test_causal_tssa_forward_state_and_gradients(T, D, H, with_state, causal_launch):
    B = 2
    w, temp, bias = leaf(B, T, H * D), leaf(H, 1, rand=True, offset=0.5), leaf(H, T + 9, 1, scale=0.1)
    s0 = [leaf(B, H, D, rand=True), leaf(B, H, D, rand=True), leaf(B, H, rand=True)] if with_state else None
    pos = torch.tensor([0, 9], device=DEVICE) if with_state else 0
    st = CausalTSSAState(*s0) if s0 else None
    y, s = causal_tssa(w, temp, bias, H, st, pos, backend="triton")
    st64 = CausalTSSAState(*[x.double() for x in s0]) if s0 else None
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H, st64, pos)
    assert_close("y", yr, y, 1e-5)
    for name, a, b in zip(CausalTSSAState._fields, s, sr):
        assert a.dtype == torch.float32
        assert_close(f"state.{name}", b, a, 1e-5)
    inputs = [w, temp, bias] + (s0 or [])
    g, _ = grads([y, *s], inputs)
    gr, _ = grads([yr, *sr], inputs)
    for name, a, b in zip(["w", "temp", "denom_bias", "sum_wsq0", "sum_pi_wsq0", "sum_pi0"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name in ("temp", "denom_bias") else 1e-4, atol=1e-6)


@pytest.mark.parametrize("B,T", [(0, 5), (2, 0)], ids=["empty-batch", "empty-sequence"])
@pytest.mark.parametrize("op", ["tssa", "causal_tssa", "causal_linear_attention"])
def test_empty_inputs_forward_and_backward(op, B, T):
    """An empty batch (or, for the causal ops, an empty sequence) gives empty outputs and empty or zero gradients,
    whatever the final state's gradient is (unused here: None inside the op)."""
    if op == "tssa" and T == 0:
        pytest.skip("TSSA needs a token (a clear error, tested elsewhere)")
    H, D = 2, 16
    if op == "causal_linear_attention":
        qkv = leaf(B, T, 3, H, D)
        y = causal_linear_attention(*qkv.unbind(2), backend="triton")[0]
        inputs, shape = [qkv], (B, T, H, D)
    else:
        w, temp = leaf(B, T, H * D), leaf(H, 1, rand=True, offset=0.5)
        y = tssa(w, temp, H, backend="triton") if op == "tssa" else \
            causal_tssa(w, temp, leaf(H, 8, 1), H, backend="triton")[0]
        inputs, shape = [w, temp], (B, T, H * D)
    assert y.shape == shape
    g = torch.autograd.grad(y.sum(), inputs, allow_unused=True)
    assert g[0].shape == inputs[0].shape
    assert all(x is None or not x.abs().sum() for x in g[1:])


@pytest.mark.parametrize("T,D,H", [(1, 48, 3), (63, 64, 4)], ids=["T1-D48-H3", "T63-D64-H4"])
def test_causal_tssa_position_free(T, D, H, causal_launch):
    """A position-free (unbounded) model: no denom_bias, from a carried state at a late position. Output, final
    state and the gradients of w, temp and the state against the fp64 reference."""
    B = 2
    w, temp = leaf(B, T, H * D), leaf(H, 1, rand=True, offset=0.5)
    s0 = [leaf(B, H, D, rand=True), leaf(B, H, D, rand=True), leaf(B, H, rand=True)]
    y, s = causal_tssa(w, temp, None, H, CausalTSSAState(*s0), 10 ** 6, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), None, H, CausalTSSAState(*[x.double() for x in s0]),
                               10 ** 6)
    assert_close("y", yr, y, 1e-5)
    for name, a, b in zip(CausalTSSAState._fields, s, sr):
        assert_close(f"state.{name}", b, a, 1e-5)
    inputs = [w, temp, *s0]
    g, _ = grads([y, *s], inputs)
    gr, _ = grads([yr, *sr], inputs)
    for name, a, b in zip(["w", "temp", "sum_wsq0", "sum_pi_wsq0", "sum_pi0"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name == "temp" else 1e-4, atol=1e-6)


@pytest.mark.parametrize("NS,F2,dtype", [(1, 2, torch.float32), (3, 0, torch.float64), (17, 2, torch.float64),
                                          (40, 3, torch.float32)],
                         ids=["one-slice", "3-slices-fp64", "17-slices-fp64", "40-slices"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forwards", "backwards"])
def test_slice_scan_of_the_three_pass_scheme(NS, F2, dtype, reverse):
    """The scan between the three-pass scheme's launches: what flows into each slice from the slices before it
    (after it, backwards) and the sequence's total, against a sum in fp64. 17 and 40 slices lay the slices of a
    program over several warps on a GPU."""
    from tost_edge.ops.triton import causal_tssa as ct
    B, F1 = 2, 37
    g = torch.Generator().manual_seed(NS)
    X = torch.randn(B, NS, F1 + F2, generator=g, dtype=torch.float64)
    init1, init2 = torch.randn(B, F1, generator=g, dtype=torch.float64), torch.randn(B, F2, generator=g,
                                                                                        dtype=torch.float64)
    init = torch.cat([init1, init2], 1)
    start = torch.full((B, NS, F1 + F2), float("nan"), device=DEVICE)
    fin1, fin2 = torch.full((B, F1), float("nan"), device=DEVICE), torch.full((B, F2), float("nan"), device=DEVICE)
    ct._scan(X.to(DEVICE, dtype), init1.float().to(DEVICE), init2.float().to(DEVICE) if F2 else None, start, fin1,
             fin2 if F2 else None, reverse=reverse)
    x = X.to(dtype).double()
    before = torch.cumsum(x.flip(1), 1).flip(1) - x if reverse else torch.cumsum(x, 1) - x
    assert_close("start", init.float().double()[:, None] + before, start, 1e-6)
    assert_close("fin1", init1.float().double() + x.sum(1)[:, :F1], fin1, 1e-6)
    if F2:
        assert_close("fin2", init2.float().double() + x.sum(1)[:, F1:], fin2, 1e-6)


@pytest.mark.parametrize("T,D,H", [(1, 48, 3), (63, 64, 4)], ids=["T1-D48-H3", "T63-D64-H4"])
def test_causal_backward_recomputing_all_of_d_pi(T, D, H, causal_launch, monkeypatch):
    """BWD_SPLIT_PI off: the walks' second backward stage takes all of d Pi itself (dy, A, P and the look-back's
    sums) instead of adding the terms in what flows in after the slice to what the first stage stored."""
    from tost_edge.ops.triton import causal_tssa as ct
    if causal_launch[2]:
        pytest.skip("CHUNKED has no such setting")
    monkeypatch.setattr(ct, "BWD_SPLIT_PI", False)
    assert ct._plan(2, T, H, D, 4)[19] == 0
    test_causal_tssa_forward_state_and_gradients(T, D, H, True, causal_launch)


@pytest.fixture(params=[(1, False, None), (2, False, None), (4, False, None), (1, True, None), (1, True, True)],
                ids=["one-program", "split2", "split4", "chunks-in-parallel", "chunks-in-parallel-backward-in-two"])
def linear_split(request, monkeypatch):
    """Causal linear attention one program per (sequence, head), or SPLIT programs each taking a block of the value
    columns (forward, dv) or of the key columns (dq, dk), or (PARALLEL) walks that carry the state only and then a
    program per chunk, its backward one kernel or two (PARALLEL_BWD_SPLIT)."""
    from tost_edge.ops.triton import linear_attention as la
    monkeypatch.setattr(la, "SPLIT", request.param[0])
    monkeypatch.setattr(la, "PARALLEL", request.param[1])
    monkeypatch.setattr(la, "PARALLEL_BWD_SPLIT", request.param[2])
    return request.param


@pytest.mark.parametrize("T,D,H", SIZES, ids=IDS)
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
def test_causal_linear_attention_forward_state_and_gradients(T, D, H, with_state, linear_split):
    B = 2
    q, k, v = leaf(B, T, H, D), leaf(B, T, H, D), leaf(B, T, H, D)
    s0 = [leaf(B, H, D, D, rand=True), leaf(B, H, D, rand=True)] if with_state else None
    st = LinearAttentionState(*s0) if s0 else None
    y, s = causal_linear_attention(q, k, v, st, backend="triton")
    st64 = LinearAttentionState(*[x.double() for x in s0]) if s0 else None
    yr, sr = naive_causal_linear_attention(q.double(), k.double(), v.double(), st64)
    check_linear_against((y, s), (yr, sr), [q, k, v] + (s0 or []), ["q", "k", "v", "kv0", "k_sum0"])


@pytest.mark.parametrize("layout", ["qkv-views", "k-alone-strided", "v-alone-strided", "one-token", "wider-v"])
def test_causal_linear_attention_reads_inputs_where_they_lie(layout, linear_split):
    """q, k, v as views of one [B, T, 3, H, D] projection (a language model's c_attn) are read where they lie, their
    tokens 3 * H * D elements apart; layouts the kernels cannot address (q and k apart, or a channel stride) are
    copied first. Output, final state and gradients against the fp64 reference."""
    B, T, H, D = 2, 1 if layout == "one-token" else 37, 3, 16
    M = 32 if layout == "wider-v" else D
    qkv = leaf(B, T, 3, H, max(D, M))
    q, k, v = qkv[..., :D].unbind(2) if layout != "wider-v" else (qkv[:, :, 0, :, :D], qkv[:, :, 1, :, :D],
                                                                     qkv[:, :, 2])
    if layout == "k-alone-strided":
        q = q.contiguous()
    if layout == "v-alone-strided":
        v = leaf(B, T, H, 2 * M)[..., ::2]                                  # channels 2 apart: copied
    y, s = causal_linear_attention(q, k, v, backend="triton")
    yr, sr = naive_causal_linear_attention(q.double(), k.double(), v.double())
    inputs = [qkv] + ([v] if layout == "v-alone-strided" else [])
    if layout == "k-alone-strided":
        inputs = [qkv, q]
    check_linear_against((y, s), (yr, sr), inputs, ["qkv", "v" if layout == "v-alone-strided" else "q"])


@pytest.mark.parametrize("T", [1, 37], ids=["T1", "T37"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "carried-state"])
def test_causal_linear_attention_qkvpacked_writes_one_gradient(T, with_state, linear_split):
    """The packed form takes qkv [B, T, 3, H, D] and hands back its gradient as one tensor, which the kernels write
    where it lies: autograd never stacks d q, d k, d v (no StackBackward, no UnbindBackward in the graph). Output,
    final state and every gradient against the fp64 reference."""
    B, H, D = 2, 3, 16
    qkv = leaf(B, T, 3, H, D)
    s0 = [leaf(B, H, D, D, rand=True), leaf(B, H, D, rand=True)] if with_state else None
    y, s = causal_linear_attention_qkvpacked(qkv, LinearAttentionState(*s0) if s0 else None, backend="triton")
    assert "Unbind" not in type(y.grad_fn.next_functions[0][0]).__name__
    q, k, v = qkv.double().unbind(2)
    yr, sr = naive_causal_linear_attention(q, k, v, LinearAttentionState(*[x.double() for x in s0]) if s0 else None)
    check_linear_against((y, s), (yr, sr), [qkv] + (s0 or []), ["qkv", "kv0", "k_sum0"])


def test_causal_linear_attention_qkvpacked_checks_its_input():
    with pytest.raises(ValueError, match=r"qkv: expected a 5-D tensor \[B, T, 3, H, D\], got shape \(2, 5, 48\)"):
        causal_linear_attention_qkvpacked(torch.randn(2, 5, 48, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match=r"qkv.shape\[2\]: expected 3 \(q, k, v\), got 2"):
        causal_linear_attention_qkvpacked(torch.randn(2, 5, 2, 3, 16, device=DEVICE), backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="fp16/bf16 kernels are checked on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_on_gpu(dtype, causal_launch):
    B, T, H, D = 2, 257, 4, 64
    w = torch.randn(B, T, H * D, device="cuda")
    temp, bias = torch.rand(H, device="cuda") + 0.5, 0.1 * torch.randn(H, T, device="cuda")
    y = tssa(w.to(dtype), temp, H, backend="triton")
    assert y.dtype == dtype
    assert_close("tssa", naive_tssa(w.to(dtype).double(), temp.double(), H), y, 5e-3)
    y, s = causal_tssa(w.to(dtype), temp, bias, H, backend="triton")
    yr, sr = naive_causal_tssa(w.to(dtype).double(), temp.double(), bias.double(), H)
    assert_close("causal_tssa", yr, y, 5e-3)
    assert all(t.dtype == torch.float32 for t in s)


def tssa_at_benchmark_shape(monkeypatch, setting, values, ratio):
    """TSSA at B64 N4096 C384 H8 in bf16 (4,096 programs a pass, several waves) with a launch setting at each of two
    values: output and gradients agree (the same arithmetic, the statistics summed in another order)."""
    from tost_edge.ops.triton import tssa as tt
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(64, 4096, 384, device="cuda", generator=g).to(torch.bfloat16)
    temp = torch.rand(8, device="cuda", generator=g) + 0.5
    cot = torch.randn(w.shape, device="cuda", generator=g).to(torch.bfloat16)
    results = []
    for value in values:
        monkeypatch.setattr(tt, setting, value)
        leaves = [w.clone().requires_grad_(), temp.clone().requires_grad_()]
        y = tssa(*leaves, 8, backend="triton")
        results.append([y, *torch.autograd.grad(y, leaves, cot)])
        torch.cuda.synchronize()
    for name, a, b in zip(["y", "dw", "dtemp"], *results):
        assert_close(name, a.float(), b.float(), ratio if name != "dtemp" else 1e-4, atol=1e-6)


@pytest.mark.skipif(DEVICE != "cuda", reason="resident programs waiting on each other run concurrently on a GPU only")
@pytest.mark.parametrize("lag", [0, 2], ids=["lag0", "lag2"])
def test_persistent_tssa_on_gpu_matches_launch_per_pass(monkeypatch, lag):
    """The persistent kernels' programs wait on each other's passes at the benchmark shape."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "QUEUE_LAG", lag)
    tssa_at_benchmark_shape(monkeypatch, "PERSISTENT", (False, True), 1e-2)


@pytest.mark.skipif(DEVICE != "cuda", reason="the passes' layouts and autotuned tiles exist only in compiled kernels")
@pytest.mark.parametrize("setting", ["PASS_PREFETCH", "OUT_SLICES", "FLAT_MIDDLE"])
def test_tssa_pass_settings_on_gpu_match(monkeypatch, setting):
    """Each way the passes can load their tiles or split their work gives the same output and gradients at the
    benchmark shape, on 4,096 programs a pass under the tiles the autotuner picks there."""
    tssa_at_benchmark_shape(monkeypatch, setting, (False, True), 5e-3)


@pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs a GPU of compute capability 9.0 or later")
@pytest.mark.parametrize("prefetch", [False, True], ids=["loads-in-place", "prefetch"])
def test_tssa_passes_launched_early_on_gpu_match(monkeypatch, prefetch):
    """The passes launched with PDL, each starting while the one before finishes and waiting for it before reading
    its statistics, against plain launches at the benchmark shape."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "PASS_PREFETCH", prefetch)
    tssa_at_benchmark_shape(monkeypatch, "PDL", (False, True), 5e-3)


@pytest.mark.skipif(DEVICE != "cuda", reason="fp16/bf16 kernels are checked on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("keep_dy", [True, False], ids=["dy-held", "dy-read-again"])
@pytest.mark.parametrize("D", [64, 48], ids=["D64", "D48-three-parts"])
def test_resident_tssa_half_precision_on_gpu(monkeypatch, dtype, keep_dy, D):
    """The resident kernels' 16-bit slices (held as int32 pairs, widened to fp32 at each use) with several slices
    a batch element, their programs waiting for each other on the GPU: output and gradients against fp64."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT", True)
    monkeypatch.setattr(tt, "RESIDENT_KEEP_DY", keep_dy)
    B, N, H = 2, 257, 4
    w = torch.randn(B, N, H * D, device="cuda").to(dtype).requires_grad_()
    temp = (torch.rand(H, device="cuda") + 0.5).requires_grad_()
    cot = torch.randn(B, N, H * D, device="cuda").to(dtype)
    y = tssa(w, temp, H, backend="triton")
    assert y.dtype == dtype and tt.last_run["forward"] == "resident"
    dw, dt = torch.autograd.grad(y, [w, temp], cot)
    assert tt.last_run["backward"] == "resident"
    w64, t64 = w.detach().double().requires_grad_(), temp.detach().double().requires_grad_()
    yr = naive_tssa(w64, t64, H)
    dwr, dtr = torch.autograd.grad(yr, [w64, t64], cot.double())
    assert_close("y", yr, y, 5e-3)
    assert_close("dw", dwr, dw, 1e-2, atol=1e-4)
    assert_close("dtemp", dtr, dt, 1e-2, atol=1e-4)


@pytest.mark.skipif(DEVICE != "cuda", reason="programs waiting on each other run concurrently on a GPU only")
@pytest.mark.parametrize("shape", [(64, 4096, 8, 48), (3, 1000, 12, 64), (2, 65536, 8, 48)],
                         ids=["B64-N4096-H8-D48", "B3-N1000-H12-D64", "B2-N65536-too-long"])
@pytest.mark.parametrize("tile,warps,keep_dy,maxnreg", [(8192, 4, True, 0), (16384, 8, True, 0), (8192, 4, False, 0),
                                                        (16384, 4, True, 80)],
                         ids=["tile8192-warps4", "tile16384-warps8", "tile8192-warps4-dy-read-again",
                              "tile16384-warps4-maxnreg80"])
def test_resident_tssa_on_gpu_matches_launch_per_pass(monkeypatch, shape, tile, warps, keep_dy, maxnreg):
    """The resident kernels, a batch element's slices held by programs that wait for each other, against the
    launch-per-pass kernels (bf16); sequences that need more programs than the GPU holds at once run the passes.
    A register cap makes the compiler spill (tiles of 16384 at 4 warps: 80 registers). D48 heads are held in three
    parts, D64 in one."""
    from tost_edge.ops.triton import tssa as tt
    B, N, H, D = shape
    for name in ("RESIDENT_TILE", "RESIDENT_BWD_TILE"):
        monkeypatch.setattr(tt, name, tile)
    for name in ("RESIDENT_WARPS", "RESIDENT_BWD_WARPS"):
        monkeypatch.setattr(tt, name, warps)
    for name in ("RESIDENT_MAXNREG", "RESIDENT_BWD_MAXNREG"):
        monkeypatch.setattr(tt, name, maxnreg)
    monkeypatch.setattr(tt, "RESIDENT_SPILL", 1 << 20)      # a capped kernel runs however much it spills
    monkeypatch.setattr(tt, "RESIDENT_KEEP_DY", keep_dy)
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(B, N, H * D, device="cuda", generator=g).to(torch.bfloat16)
    temp = torch.rand(H, device="cuda", generator=g) + 0.5
    cot = torch.randn(w.shape, device="cuda", generator=g).to(torch.bfloat16)
    results = []
    for res in (False, True):
        monkeypatch.setattr(tt, "RESIDENT", res)
        leaves = [w.clone().requires_grad_(), temp.clone().requires_grad_()]
        y = tssa(*leaves, H, backend="triton")
        results.append([y, *torch.autograd.grad(y, leaves, cot)])
        torch.cuda.synchronize()
    expected = "passes" if N == 65536 else "resident"
    assert tt.last_run == {"forward": expected, "backward": expected}
    for name, a, b in zip(["y", "dw", "dtemp"], *results):
        assert_close(name, a.float(), b.float(), 1e-2 if name != "dtemp" else 1e-4, atol=1e-6)


def causal_at_benchmark_shape(monkeypatch, H, variants, B=4, T=2048):
    """Outputs, final state and every gradient of causal TSSA at B·T·H·64 (bf16 w, carried state, starting at position
    3) once per variant: a dict of causal_tssa settings, or None for the fp64 reference."""
    from tost_edge.ops.triton import causal_tssa as ct
    D = 64
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(B, T, H * D, device="cuda", generator=g).to(torch.bfloat16)
    temp = torch.rand(H, device="cuda", generator=g) + 0.5
    bias = 0.01 * torch.randn(H, T + 3, device="cuda", generator=g)
    s0 = [torch.rand(B, H, D, device="cuda", generator=g), torch.rand(B, H, D, device="cuda", generator=g),
          torch.rand(B, H, device="cuda", generator=g)]
    cot = [torch.randn(s, device="cuda", generator=g) for s in [(B, T, H * D), (B, H, D), (B, H, D), (B, H)]]
    cot[0] = cot[0].to(torch.bfloat16).float()          # what y's bf16 gradient holds, for the reference too
    results = []
    for variant in variants:
        for name, value in (variant or {}).items():
            monkeypatch.setattr(ct, name, value)
        cast = (lambda x: x.double()) if variant is None else (lambda x: x)
        leaves = [cast(x).clone().requires_grad_() for x in (w, temp, bias, *s0)]
        fn = naive_causal_tssa if variant is None else lambda *a: causal_tssa(*a, backend="triton")
        y, s = fn(*leaves[:3], H, CausalTSSAState(*leaves[3:]), 3)
        results.append([y, *s, *torch.autograd.grad([y, *s], leaves, [c.to(o.dtype) for c, o in zip(cot, [y, *s])])])
        torch.cuda.synchronize()
    return results


CAUSAL_RESULTS = ["y", "S", "A", "P", "dw", "dtemp", "dbias", "dS0", "dA0", "dP0"]


@pytest.mark.skipif(DEVICE != "cuda",
                    reason="thousands of programs chained by look-back run concurrently on a GPU only")
@pytest.mark.parametrize("programs,prefix", [(1024, True), (4096, True), (1024, False)],
                         ids=["1024-programs", "4096-programs", "1024-programs-totals-only"])
def test_fused_causal_on_gpu_matches_three_passes(monkeypatch, programs, prefix):
    """At a benchmark shape the fused kernels' slices run concurrently and wait on each other's sums: outputs, final
    state and every gradient equal the three-pass kernels' (the same arithmetic, summed in another order)."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "PROGRAMS", programs)
    monkeypatch.setattr(ct, "LOOKBACK_PREFIX", prefix)
    results = causal_at_benchmark_shape(monkeypatch, 12, [{"FUSED": False}, {"FUSED": True}], B=8, T=4096)
    for name, a, b in zip(CAUSAL_RESULTS, *results):
        assert_close(name, a.float(), b.float(), 1e-2 if name in ("y", "dw") else 1e-4, atol=1e-6)


@pytest.mark.skipif(DEVICE != "cuda", reason="the tiles' register layouts exist only in compiled kernels")
@pytest.mark.parametrize("H,warps,unroll,bwd_unroll,maxnreg", [(12, 0, 8, 2, 0), (12, 8, 4, 4, 0), (20, 0, 8, 2, 0),
                                                                (20, 4, 4, 2, 0), (12, 0, 8, 4, 168)],
                         ids=["H12-auto-warps-8-2", "H12-8warps-4-4", "H20-auto-warps-8-2", "H20-4warps-4-2",
                              "H12-auto-warps-8-4-forward-capped-168"])
def test_tiled_causal_on_gpu_matches_token_walk(monkeypatch, H, warps, unroll, bwd_unroll, maxnreg):
    """At a benchmark shape the tiled walks (tokens held in each thread, or split across warps) give the token
    walks' outputs, final state and every gradient, against the fp64 reference as well."""
    from tost_edge.ops.triton import causal_tssa as ct
    walk = dict(TILED=False, BWD_TILED=False, TILED_WARPS=warps, TILED_MAXNREG=maxnreg, UNROLL=ct.UNROLL,
                BWD_UNROLL=0)
    tiles = dict(TILED=True, BWD_TILED=True, TILED_WARPS=warps, TILED_MAXNREG=maxnreg, UNROLL=unroll,
                 BWD_UNROLL=bwd_unroll)
    results = causal_at_benchmark_shape(monkeypatch, H, [walk, tiles, None])
    for name, walked, tiled, ref in zip(CAUSAL_RESULTS, *results):
        assert_close(name, walked.float(), tiled.float(), 1e-2 if name in ("y", "dw") else 1e-4, atol=1e-6)
        assert_close(name + " vs fp64", ref, tiled.double(), 2e-2, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="warps and layouts exist only in compiled kernels")
@pytest.mark.parametrize("H,tiled_warps,bwd_warps,bwd_unroll,bwd_maxnreg",
                         [(12, 1, 4, 1, 0), (12, 2, 4, 2, 0), (20, 1, 8, 1, 0), (20, 2, 4, 2, 0), (12, 0, 8, 1, 80),
                          (12, 0, 4, 2, 128), (20, 0, 8, 1, 128), (12, 0, 8, 4, 0), (20, 0, 8, 2, 64),
                          (20, 0, 16, 4, 0)],
                         ids=["H12-1warp-tiles-4warp-steps1", "H12-2warp-tiles-4warp-steps2",
                              "H20-1warp-tiles-8warp-steps1", "H20-2warp-tiles-4warp-steps2",
                              "H12-8warp-steps1-capped-80", "H12-4warp-steps2-capped-128",
                              "H20-8warp-steps1-capped-128",
                              "H12-8warp-steps4-uncapped", "H20-8warp-steps2-cap-64-spills-runs-uncapped",
                              "H20-16warp-steps4"])
def test_causal_programs_of_fewer_warps_on_gpu(monkeypatch, H, tiled_warps, bwd_warps, bwd_unroll, bwd_maxnreg):
    """The sweep's candidates with fewer warps a program (tiled forward of 1 or 2 warps, walked backward of 4) or
    more programs an SM (a register cap on the backward), and at H20 a walked backward of 16 warps (4 padded
    elements a thread a token, as H12 at 8: 128 registers, 16 warps an SM against 8), give the defaults' outputs,
    final state and every gradient, against the fp64 reference as well."""
    fewer = dict(TILED_WARPS=tiled_warps, BWD_WARPS=bwd_warps, BWD_UNROLL=bwd_unroll, BWD_MAXNREG=bwd_maxnreg)
    results = causal_at_benchmark_shape(monkeypatch, H, [{}, fewer, None])
    for name, default, small, ref in zip(CAUSAL_RESULTS, *results):
        assert_close(name, default.float(), small.float(), 1e-2 if name in ("y", "dw") else 1e-4, atol=1e-6)
        assert_close(name + " vs fp64", ref, small.double(), 2e-2, atol=1e-5)
    if bwd_maxnreg == 64:   # far more than 16 bytes a thread spill under it at H20: the cap is dropped
        from tost_edge.ops.triton import causal_tssa as ct
        from tost_edge.ops.triton import utils
        ran = [options for key, options in utils._UNSPILLED.items()
               if key[0] is ct._b_fused and dict(key[1]).get("maxnreg") == 64]
        assert ran and all("maxnreg" not in options for options in ran), ran


@pytest.mark.skipif(DEVICE != "cuda",
                    reason="thousands of programs chained by look-back run concurrently on a GPU only")
@pytest.mark.parametrize("H,chunk,tile,bwd_tile,fp64", [(12, 64, 4, 2, None), (20, 64, 4, 2, None),
                                                        (12, 256, 8, 2, None), (12, 64, 4, 2, False),
                                                        (12, 16, 2, 4, None)],
                         ids=["H12-chunks64", "H20-chunks64", "H12-chunks256-tiles8", "H12-chunks64-d-S-in-pairs",
                              "H12-chunks16-backward-tiles4"])
def test_chunked_causal_on_gpu_matches_token_walk(monkeypatch, H, chunk, tile, bwd_tile, fp64):
    """At a benchmark shape CHUNKED (thousands of one-warp programs chained by look-back along each group of heads)
    gives the default kernels' outputs, final state and every gradient, against the fp64 reference as well."""
    chunked = dict(CHUNKED=True, CHUNKED_TOKENS=chunk, CHUNKED_TILE=tile, CHUNKED_BWD_TILE=bwd_tile, SUFFIX_FP64=fp64)
    results = causal_at_benchmark_shape(monkeypatch, H, [{}, chunked, None])
    for name, default, chunks, ref in zip(CAUSAL_RESULTS, *results):
        assert_close(name, default.float(), chunks.float(), 1e-2 if name in ("y", "dw") else 1e-4, atol=1e-6)
        assert_close(name + " vs fp64", ref, chunks.double(), 2e-2, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="the fp32 pairs' unfused products (mul.rn) exist only in compiled kernels")
@pytest.mark.parametrize("H", [12, 20], ids=["H12", "H20"])
def test_causal_on_gpu_d_S_in_fp32_pairs(monkeypatch, H):
    """At a benchmark shape the backward summing d S in fp32 pairs (slow-fp64 GPUs' default) gives the fp64 sums'
    outputs, final state and every gradient, against the fp64 reference as well."""
    results = causal_at_benchmark_shape(monkeypatch, H, [{"SUFFIX_FP64": True}, {"SUFFIX_FP64": False}, None])
    for name, fp64, pairs, ref in zip(CAUSAL_RESULTS, *results):
        assert_close(name, fp64.float(), pairs.float(), 1e-4, atol=1e-6)
        assert_close(name + " vs fp64", ref, pairs.double(), 2e-2, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="fp16/bf16 kernels are checked on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_linear_attention_on_gpu(dtype, linear_split):
    """Tensor-core dots in the input dtype (fp32 accumulation and state) against fp64 on the same rounded inputs."""
    B, T, H, D = 2, 257, 3, 64
    q, k, v = (torch.randn(B, T, H, D, device="cuda").to(dtype).requires_grad_() for _ in range(3))
    y, s = causal_linear_attention(q, k, v, backend="triton")
    assert y.dtype == dtype and all(t.dtype == torch.float32 for t in s)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    yr, sr = naive_causal_linear_attention(q64, k64, v64)
    tol = 1e-2 if dtype == torch.bfloat16 else 3e-3
    assert_close("y", yr, y, tol)
    for name, a, b in zip(LinearAttentionState._fields, s, sr):
        assert_close(f"state.{name}", b, a, tol)          # phi(k) is rounded to the input dtype for the dot
    g, _ = grads([y, *s], [q, k, v])
    gr, _ = grads([yr, *sr], [q64, k64, v64])
    for name, a, b in zip("qkv", g, gr):
        assert_close(f"d{name}", b, a, 2 * tol)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's case (on a GPU: test_half_precision_linear_attention)")
def test_bf16_linear_attention_under_the_interpreter(linear_split):
    """Triton's interpreter has no bf16 dot (it multiplies the bit patterns: outputs ~1e10); bf16 inputs run the
    kernels in fp32 there, with a warning, and land within bf16's rounding of the fp64 reference."""
    B, T, H, D = 2, 37, 2, 16
    q, k, v = (torch.randn(B, T, H, D).to(torch.bfloat16).requires_grad_() for _ in range(3))
    with pytest.warns(UserWarning, match="no bfloat16 dot"):
        y, s = causal_linear_attention(q, k, v, backend="triton")
    assert y.dtype == torch.bfloat16
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    yr, sr = naive_causal_linear_attention(q64, k64, v64)
    assert_close("y", yr, y, 1e-2)
    for name, a, b in zip(LinearAttentionState._fields, s, sr):
        assert_close(f"state.{name}", b, a, 1e-2)
    g, _ = grads([y, *s], [q, k, v])
    gr, _ = grads([yr, *sr], [q64, k64, v64])
    for name, a, b in zip("qkv", g, gr):
        assert_close(f"d{name}", b, a, 2e-2)


def test_triton_without_gpu_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    w = torch.randn(1, 4, 8)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        tssa(w, torch.ones(2), 2, backend="triton")


@pytest.mark.parametrize("op", ["tssa", "causal_tssa", "causal_linear_attention"])
def test_float64_is_a_clear_error_not_fp32_results(op):
    """The kernels accumulate in fp32: float64 inputs would come back float64 at fp32 precision."""
    w = torch.randn(1, 4, 32, dtype=torch.float64, device=DEVICE)
    call = {"tssa": lambda: tssa(w, torch.ones(2), 2, backend="triton"),
            "causal_tssa": lambda: causal_tssa(w, torch.ones(2), None, 2, backend="triton"),
            "causal_linear_attention": lambda: causal_linear_attention(*[w.view(1, 4, 2, 16)] * 3, backend="triton")}
    with pytest.raises(ValueError, match=r"is torch.float64; the kernels take float32, float16 or bfloat16.*"
                                         r"use backend='torch'"):
        call[op]()


@pytest.mark.parametrize("save_pi", [True, False], ids=["stored-pi", "recomputed-pi"])
@pytest.mark.parametrize("programs", [1, 3], ids=lambda p: f"programs{p}")
def test_long_slices_per_program(monkeypatch, programs, save_pi, causal_launch):
    """Few programs: each walks many chunks, carrying its running sums across them. The backward passes read the
    forward's Pi, or recompute it."""
    from tost_edge.ops.triton import causal_tssa as ct, tssa as tt
    if ct.CHUNKED:
        pytest.skip("CHUNKED takes neither PROGRAMS nor SAVE_PI (a program a chunk, Pi always kept)")
    monkeypatch.setattr(ct, "PROGRAMS", programs)
    monkeypatch.setattr(tt, "PROGRAMS", programs)
    monkeypatch.setattr(ct, "SAVE_PI", save_pi)
    monkeypatch.setattr(tt, "SAVE_PI", save_pi)
    check_causal_with_state(2, 150, 3, 16, 3)
    check_tssa(leaf(2, 150, 3 * 16), leaf(3, 1, rand=True, offset=0.5), 3)


@pytest.mark.parametrize("group", [1, 2], ids=lambda g: f"group{g}")
def test_l2_groups(monkeypatch, group, causal_launch):
    """Passes run group by group over the batch (the last group shorter): the same outputs, final states and
    gradients, and no group reads or writes another's statistics."""
    from tost_edge.ops.triton import causal_tssa as ct, tssa as tt
    if ct.CHUNKED:
        pytest.skip("CHUNKED runs the whole batch at once")
    monkeypatch.setattr(tt, "L2_GROUP", group)
    monkeypatch.setattr(ct, "L2_GROUP", group)
    check_tssa(leaf(5, 21, 3 * 16), leaf(3, rand=True, offset=0.5), 3)
    check_causal_with_state(5, 21, 3, 16, torch.tensor([0, 4, 1, 2, 3], device=DEVICE))


@pytest.mark.parametrize("programs", [2, 7], ids=lambda p: f"programs{p}")
def test_fused_causal_lookback_from_totals_only(monkeypatch, programs):
    """The fused kernels' look-back when no slice has published its inclusive sums yet (on a GPU, the slices still
    running): every program adds the totals of all slices before it (after it, backward) and the initial state."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "FUSED", True)
    monkeypatch.setattr(ct, "LOOKBACK_PREFIX", False)
    monkeypatch.setattr(ct, "PROGRAMS", programs)
    check_causal_with_state(3, 29, 2, 32, 2)


@pytest.mark.parametrize("parts,D,persistent", [(False, 48, False), (True, 24, False), (True, 48, True),
                                                (False, 48, True)],
                         ids=["D48-padded", "D24-three-parts", "D48-three-parts-persistent", "D48-padded-persistent"])
def test_tssa_passes_head_parts(monkeypatch, parts, D, persistent):
    """The passes walk a head of three times a power of two in three unpadded parts (PARTS) or one padded part:
    both against fp64, launched per pass and persistent."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "PARTS", parts)
    monkeypatch.setattr(tt, "PERSISTENT", persistent)
    assert tt._parts(D, 64 if D == 48 else 32) == ((D // 3, 3) if parts else (64 if D == 48 else 32, 1))
    check_tssa(leaf(2, 37, 3 * D), leaf(3, rand=True, offset=0.5), 3)
    assert tt.last_run == {"forward": "persistent" if persistent else "passes",
                           "backward": "persistent" if persistent else "passes"}


@pytest.mark.parametrize("tokens,lag", [(4, 0), (8, 1), (64, 3)], ids=["items4-lag0", "items8-lag1", "items64-lag3"])
def test_tssa_persistent_work_items(monkeypatch, tokens, lag):
    """The persistent kernels with items of a few tokens (many per batch element and pass, the last one short) and
    the passes of a batch element 0 to 3 waves apart."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "PERSISTENT", True)
    monkeypatch.setattr(tt, "QUEUE_TOKENS", tokens)
    monkeypatch.setattr(tt, "QUEUE_LAG", lag)
    check_tssa(leaf(3, 37, 4 * 16), leaf(4, rand=True, offset=0.5), 4)


@pytest.mark.parametrize("save_pi", [True, False], ids=["stored-pi", "recomputed-pi"])
def test_resident_tssa_backward_reading_dy_again(monkeypatch, save_pi):
    """The resident backward that reads dy again for dw instead of holding it, with Pi stored or recomputed."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT", True)
    monkeypatch.setattr(tt, "RESIDENT_KEEP_DY", False)
    monkeypatch.setattr(tt, "SAVE_PI", save_pi)
    check_tssa(leaf(3, 45, 4 * 48), leaf(4, rand=True, offset=0.5), 4)
    assert tt.last_run == {"forward": "resident", "backward": "resident"}


@pytest.mark.parametrize("forward,backward", [(True, False), (False, True)],
                         ids=["resident-forward-passes-backward", "passes-forward-resident-backward"])
def test_resident_tssa_chosen_per_direction(monkeypatch, forward, backward):
    """RESIDENT_BWD decides the backward apart from the forward: each direction runs the scheme asked for, and
    the gradients match fp64 whichever scheme computed the statistics the backward reads."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT", forward)
    monkeypatch.setattr(tt, "RESIDENT_BWD", backward)
    check_tssa(leaf(2, 21, 3 * 48), leaf(3, rand=True, offset=0.5), 3)
    name = {True: "resident", False: "passes"}
    assert tt.last_run == {"forward": name[forward], "backward": name[backward]}


@pytest.mark.parametrize("N,tokens,keep_dy,save_pi,D", [(30, 4, True, True, 32), (30, 4, False, False, 32),
                                                      (7, 2, True, False, 32), (1, 2, False, True, 32),
                                                      (30, 4, True, False, 24), (7, 2, False, True, 24)],
                         ids=["N30-slices8", "N30-slices8-dy-read-again-recomputed-pi", "N7-slices4-short-last",
                              "N1-one-slice", "N30-slices8-D24-three-parts-recomputed-pi",
                              "N7-slices4-D24-three-parts-dy-read-again"])
def test_resident_tssa_slices_waiting_for_each_other(monkeypatch, concurrent_programs, N, tokens, keep_dy, save_pi,
                                                     D):
    """The resident kernels with several slices a batch element, their programs running at once (threads under the
    interpreter) and waiting on each other's statistics, as on a GPU: output and gradients against fp64. D24 heads
    are held as three parts of 8 channels."""
    from tost_edge.ops.triton import tssa as tt, tssa_resident
    monkeypatch.setattr(tt, "RESIDENT", True)
    monkeypatch.setattr(tt, "RESIDENT_KEEP_DY", keep_dy)
    monkeypatch.setattr(tt, "SAVE_PI", save_pi)
    monkeypatch.setattr(tssa_resident, "slices", lambda n, tile, row: (tokens, -(-n // tokens)))
    check_tssa(leaf(2, N, 3 * D), leaf(3, rand=True, offset=0.5), 3)
    assert tt.last_run == {"forward": "resident", "backward": "resident"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("D,keep_dy,odd_start", [(32, True, False), (32, False, False), (33, True, False),
                                                 (32, True, True), (48, True, False), (48, False, True)],
                         ids=["D32", "D32-dy-read-again", "D33-odd", "D32-at-an-odd-element", "D48-three-parts",
                              "D48-three-parts-at-an-odd-element-dy-read-again"])
def test_resident_tssa_16bit_slices(monkeypatch, concurrent_programs, dtype, D, keep_dy, odd_start):
    """16-bit inputs: the resident kernels hold w's and dy's slices as int32 pairs (even D, 4-byte aligned) or as
    loaded (odd D, or tensors starting at an odd element) and widen them at each use; with 4 slices a batch element
    against the launch-per-pass kernels in the same dtype and against fp64."""
    from tost_edge.ops.triton import tssa as tt, tssa_resident
    B, N, H = 2, 13, 3
    monkeypatch.setattr(tt, "RESIDENT_KEEP_DY", keep_dy)
    monkeypatch.setattr(tssa_resident, "slices", lambda n, tile, row: (4, -(-n // 4)))
    g = torch.Generator().manual_seed(0)

    def tensor(*shape):             # contiguous; where odd_start, 2 bytes past a 4-byte boundary
        x = torch.randn(*shape, generator=g).to(DEVICE, dtype)
        if not odd_start:
            return x
        base = torch.empty(x.numel() + 1, device=DEVICE, dtype=dtype)
        base[1:] = x.flatten()
        return base[1:].view(shape)

    w, cot = tensor(B, N, H * D), tensor(B, N, H * D)
    temp = (torch.rand(H, generator=g) + 0.5).to(DEVICE)
    assert tssa_resident.packed(D, w, cot) == (D % 2 == 0 and not odd_start)
    results = []
    for res in (False, True):
        monkeypatch.setattr(tt, "RESIDENT", res)
        leaves = [w.detach().requires_grad_(), temp.clone().requires_grad_()]      # w's own storage, not a copy
        y = tssa(*leaves, H, backend="triton")
        results.append([y, *torch.autograd.grad(y, leaves, cot)])
    assert tt.last_run == {"forward": "resident", "backward": "resident"}
    for name, a, b in zip(["y", "dw", "dtemp"], *results):
        assert b.dtype == a.dtype
        assert_close(name, a.float(), b.float(), 1e-2 if name != "dtemp" else 1e-4, atol=1e-6)
    w64, t64 = w.double().requires_grad_(), temp.double().requires_grad_()
    yr = naive_tssa(w64, t64, H)
    dwr, dtr = torch.autograd.grad(yr, [w64, t64], cot.double())
    y, dw, dt = results[1]
    assert_close("y", yr, y, 5e-3)
    assert_close("dw", dwr, dw, 1e-2, atol=1e-4)
    assert_close("dtemp", dtr, dt, 1e-2, atol=1e-4)


@pytest.mark.parametrize("D,held", [(48, (3, 16)), (96, (3, 32)), (24, (3, 8)), (12, (3, 4)), (64, (1, 64)),
                                    (32, (1, 32)), (56, (1, 64)), (33, (1, 64)), (6, (1, 8)), (1, (1, 2))])
def test_resident_tssa_head_parts(D, held):
    """A head of three times a power of two (at least 4) is held unpadded as three parts, any other head as one part
    padded to a power of two: (parts, each part's padded width)."""
    from tost_edge.ops.triton import tssa_resident
    NP, BD = tssa_resident.parts(D)
    assert (NP, BD) == held and NP * BD >= D and (NP == 1 or NP * BD == D)


@pytest.mark.parametrize("programs,tiled", [(3, False), (8, False), (8, True)],
                         ids=["programs3", "programs8", "programs8-tiled"])
def test_fused_causal_and_persistent_tssa_with_programs_running_at_once(monkeypatch, concurrent_programs, programs,
                                                                       tiled):
    """The fused causal kernels (slices chained by look-back, walked token by token or in tiles) and the persistent
    TSSA kernels (passes waiting for the previous pass) with their programs running at once, in any interleaving."""
    from tost_edge.ops.triton import causal_tssa as ct, tssa as tt
    monkeypatch.setattr(ct, "FUSED", True)
    monkeypatch.setattr(ct, "PROGRAMS", programs)
    monkeypatch.setattr(ct, "TILED", tiled)
    monkeypatch.setattr(ct, "BWD_TILED", tiled)
    monkeypatch.setattr(tt, "PERSISTENT", True)
    monkeypatch.setattr(tt, "QUEUE_TOKENS", 4)
    check_causal_with_state(2, 23, 2, 16, 1)
    check_tssa(leaf(2, 13, 2 * 16), leaf(2, rand=True, offset=0.5), 2)


@pytest.mark.parametrize("H", [4, 6], ids=["H4-one-group", "H6-three-groups-of-2"])
def test_chunked_causal_with_programs_running_at_once(monkeypatch, concurrent_programs, H):
    """CHUNKED with all programs of a launch running at once: each chunk's look-back (forward along the sequence,
    backward from its end) finds what its neighbours published, in any interleaving."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "CHUNKED", True)
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", 4)
    check_causal_with_state(2, 17, H, 16, 1)


def test_chunked_causal_plan(monkeypatch):
    """CHUNKED plans chunks of whole tiles both ways, warps that keep a tile's tokens in each thread (a group of 4
    bf16 heads of 64 channels fills one warp's lanes; fp32, two), Pi kept for the backward pass."""
    from tost_edge.ops.triton import causal_tssa as ct, causal_tssa_chunks as chunks
    monkeypatch.setattr(ct, "CHUNKED", True)
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", 62)
    assert [chunks.group_size(h) for h in (12, 20, 6, 3, 1)] == [4, 4, 2, 1, 1]
    plan = ct._plan(8, 4096, 12, 64, 2)
    BD, HP, BT, NT, per, bwd_BT, *_ = plan
    assert (BD, HP, BT, bwd_BT, per, NT) == (64, 16, 4, 2, 64, 64)
    assert plan[9] == 1 and plan[17] == 1 and plan[12] == plan[14] == 1 and plan[18] == ct.CHUNKED_STAGES
    assert ct._plan(8, 4096, 12, 64, 4)[12] == 2
    assert ct._plan(2, 3, 5, 48, 4)[2:6] == [4, 1, 4, 2]          # T = 3: one chunk, one tile past its end


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's slice limit; on a GPU the stand-in card tests cover it")
def test_resident_tssa_runs_the_passes_where_its_slices_cannot_all_run_at_once(monkeypatch):
    """Under the interpreter (one program at a time) a sequence longer than one slice takes the launch-per-pass
    kernels; the result is the same."""
    from tost_edge.ops.triton import tssa as tt, tssa_resident
    monkeypatch.setattr(tt, "RESIDENT", True)
    monkeypatch.setattr(tssa_resident, "INTERPRET_TOKENS", 16)
    check_tssa(leaf(2, 37, 3 * 16), leaf(3, rand=True, offset=0.5), 3)
    assert tt.last_run == {"forward": "passes", "backward": "passes"}
    check_tssa(leaf(2, 9, 3 * 16), leaf(3, rand=True, offset=0.5), 3)
    assert tt.last_run == {"forward": "resident", "backward": "resident"}


@pytest.mark.parametrize("regs,warps,shared,expected", [(167, 4, 1024, 3), (185, 8, 1024, 1), (128, 16, 1024, 1),
                                                        (64, 4, 1024, 8), (255, 8, 0, 1), (32, 1, 0, 16),
                                                        (32, 4, 40 * 1024, 2)],
                         ids=["167regs-4warps", "185regs-8warps", "128regs-16warps", "64regs-4warps",
                              "255regs-8warps", "32regs-1warp", "40KB-shared"])
def test_resident_programs_per_sm(regs, warps, shared, expected):
    """How many resident programs an SM holds (sm_86/87 limits: 64K registers, 1536 threads, 100 KB shared memory,
    16 programs), worked out by hand from CUDA's occupancy rules."""
    from tost_edge.ops.triton.tssa_resident import programs_per_sm
    assert programs_per_sm(regs, warps, shared) == expected


@pytest.fixture
def stand_in_card(monkeypatch):
    """tssa_resident as on a GPU of 4 SMs (sm_90's register file, threads and shared memory), with nothing cached."""
    from types import SimpleNamespace
    from tost_edge.ops.triton import tssa_resident as tr
    card = SimpleNamespace(multi_processor_count=4, regs_per_multiprocessor=65536,
                           max_threads_per_multi_processor=2048, shared_memory_per_multiprocessor=228 * 1024)
    monkeypatch.setattr(tr, "interpreting", lambda: False)
    monkeypatch.setattr(tr.torch.cuda, "get_device_properties", lambda device: card)
    monkeypatch.setattr(tr, "_FITS", {})
    return tr


def test_resident_launch_on_a_gpu_checks_the_programs_fit_once(stand_in_card):
    """The GPU branch of the resident launch with a stand-in kernel and card: it launches where the card holds a
    batch element's programs at once (by the compiled kernel's registers), declines where it does not, compiles to
    count only once per specialisation, and passes a register cap to both the compile and the launch."""
    from types import SimpleNamespace
    tr, calls = stand_in_card, []

    class Kernel:                   # 167 registers uncapped, 4 warps: 3 programs per SM, 12 on this card
        def warmup(self, *args, grid, num_warps, enable_fp_fusion, maxnreg=0):   # compiled as launched
            assert enable_fp_fusion is True
            calls.append(("compile", grid, maxnreg))
            return SimpleNamespace(_init_handles=lambda: None, n_regs=maxnreg or 167,
                                   metadata=SimpleNamespace(shared=0))

        def __getitem__(self, grid):
            return lambda *args, num_warps, enable_fp_fusion, maxnreg=0: calls.append(("launch", grid, maxnreg))

    kernel, w = Kernel(), torch.zeros(2, 3)
    assert tr._launch(kernel, 5, 12, (w, 100, 12, 384), 4, 0, "cuda:0")
    assert tr._launch(kernel, 5, 12, (w, 100, 12, 384), 4, 0, "cuda:0")
    assert not tr._launch(kernel, 5, 13, (w, 104, 13, 384), 4, 0, "cuda:0")
    assert tr._launch(kernel, 5, 13, (w, 104, 13, 384), 4, 128, "cuda:0")   # capped at 128: 4 per SM, 16 held
    assert calls == [("compile", (60,), 0), ("launch", (60,), 0), ("launch", (60,), 0), ("compile", (65,), 0),
                     ("compile", (65,), 128), ("launch", (65,), 128)]


def test_resident_launch_in_one_wave_needs_the_whole_batch_held(stand_in_card):
    """With `whole` (RESIDENT_ONE_WAVE) the launch needs every program of the batch held at once, not a batch
    element's: 12 on the stand-in card."""
    from types import SimpleNamespace
    tr, calls = stand_in_card, []

    class Kernel:                   # 167 registers, 4 warps: 3 programs per SM, 12 on this card
        def warmup(self, *args, grid, num_warps, enable_fp_fusion, maxnreg=0):
            calls.append("compile")
            return SimpleNamespace(_init_handles=lambda: None, n_regs=167, metadata=SimpleNamespace(shared=0))

        def __getitem__(self, grid):
            return lambda *args, **options: calls.append(("launch", grid))

    kernel, w = Kernel(), torch.zeros(2, 3)
    assert tr._launch(kernel, 2, 6, (w, 100, 6), 4, 0, "cuda:0", whole=True)           # 12 programs: one wave
    assert not tr._launch(kernel, 3, 6, (w, 100, 6), 4, 0, "cuda:0", whole=True)       # 18
    assert tr._launch(kernel, 3, 6, (w, 100, 6), 4, 0, "cuda:0")                       # a batch element's 6 fit
    assert calls == ["compile", ("launch", (12,)), ("launch", (18,))]


@pytest.mark.parametrize("settings,one_wave", [({}, 1), ({"PERSISTENT": True}, 0), ({"L2_GROUP": 2}, 0),
                                               ({"RESIDENT_ONE_WAVE": False}, 0)],
                         ids=["default", "persistent", "l2-groups", "off"])
def test_tssa_plan_asks_for_one_wave_unless_another_scheme_is_set(monkeypatch, settings, one_wave):
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT_ONE_WAVE", True)
    for name, value in settings.items():
        monkeypatch.setattr(tt, name, value)
    assert tt._plan()[5] == one_wave


@pytest.mark.parametrize("resident,asked", [(False, [True]), (True, [False])], ids=["one-wave", "per-batch-element"])
def test_tssa_forward_asks_for_one_wave_on_a_gpu(monkeypatch, resident, asked):
    """On a GPU (never under the interpreter, which runs programs one at a time) the forward asks the resident
    kernels to run where the whole launch fits at once, or where a batch element's programs do with RESIDENT;
    declined, the passes run."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT_ONE_WAVE", True)
    monkeypatch.setattr(tt, "RESIDENT", resident)
    calls = []
    monkeypatch.setattr(tt.resident, "forward", lambda *a: calls.append(a[-1]) or False)   # declines
    w, temp = leaf(2, 9, 32), leaf(2, rand=True, offset=0.5)
    tt._forward(w, temp, 2, tt._plan())
    assert calls == ([] if not resident else [False])                  # the interpreter: no one-wave request
    monkeypatch.setattr(tt, "interpreting", lambda: False)
    calls.clear()
    y, _, _ = tt._forward(w, temp, 2, tt._plan())
    assert calls == asked and tt.last_run["forward"] == "passes"
    assert_close("y", naive_tssa(w.double(), temp.double(), 2), y, 1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="waves of resident programs exist on a GPU only")
def test_tssa_short_batches_run_resident_in_one_wave_on_gpu(monkeypatch):
    """RESIDENT_ONE_WAVE on a real card: a vision-length batch (B8·N196·C384) runs its forward resident, a long one
    (B64·N4096, many waves) the passes; both backward passes run the passes; results against fp64."""
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT_ONE_WAVE", True)
    g = torch.Generator(device="cuda").manual_seed(0)
    for B, N, expected in ((8, 196, "resident"), (64, 4096, "passes")):
        w = torch.randn(B, N, 384, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
        temp = (torch.rand(8, device="cuda", generator=g) + 0.5).requires_grad_()
        y = tssa(w, temp, 8, backend="triton")
        dw, dt = torch.autograd.grad(y.float().square().sum(), [w, temp])
        assert tt.last_run == {"forward": expected, "backward": "passes"}, (B, N)
        w64, t64 = w.detach().double().requires_grad_(), temp.detach().double().requires_grad_()
        y64 = naive_tssa(w64, t64, 8)
        dw64, dt64 = torch.autograd.grad(y64.square().sum(), [w64, t64])
        assert_close("y", y64, y, 1e-2)
        assert_close("dw", dw64, dw, 2e-2)
        assert_close("dtemp", dt64, dt, 2e-2)


@pytest.mark.parametrize("dtype,odd_start,expected", [(torch.bfloat16, False, (16384, 96)),
                                                      (torch.bfloat16, True, (16384, 0)),
                                                      (torch.float16, False, (16384, 96)),
                                                      (torch.float32, False, (8192, 0))],
                         ids=["bf16-packed", "bf16-at-an-odd-element", "fp16-packed", "fp32"])
def test_resident_settings_by_dtype(dtype, odd_start, expected):
    """The resident tile and register cap are given for 16-bit slices held as pairs: fp32 slices hold half the
    elements, and the cap applies to pairs only (elsewhere the compiler's choice, which does not spill)."""
    from tost_edge.ops.triton import tssa_resident as tr
    base = torch.zeros(2 * 48 + 1, dtype=dtype)
    w = base[1:].view(2, 48) if odd_start else base[:-1].view(2, 48)
    assert tr._setting(16384, 96, w, 48) == expected
    assert tr._setting(16384, 96, w, 48, torch.zeros(2, 48, dtype=dtype))[1] == expected[1]


def test_resident_launch_drops_a_register_cap_that_spills(stand_in_card):
    """A register cap whose compiled kernel spills more than the allowance a thread is dropped: the compiler's
    choice is compiled, counted and launched instead; within the allowance the capped kernel runs."""
    from types import SimpleNamespace
    tr, calls = stand_in_card, []

    class Kernel:                   # 120 registers uncapped; capped at 96 it spills 40 bytes a thread
        def warmup(self, *args, grid, num_warps, enable_fp_fusion, maxnreg=0):   # compiled as launched
            assert enable_fp_fusion is True
            calls.append(("compile", maxnreg))
            return SimpleNamespace(_init_handles=lambda: None, n_regs=maxnreg or 120,
                                   n_spills=40 if maxnreg else 0, metadata=SimpleNamespace(shared=0))

        def __getitem__(self, grid):
            return lambda *args, num_warps, enable_fp_fusion, maxnreg=0: calls.append(("launch", maxnreg))

    kernel, w = Kernel(), torch.zeros(2, 3)
    assert tr._launch(kernel, 2, 8, (w, 100, 8), 4, 96, "cuda:0", 16)        # 40 > 16: uncapped
    assert tr._launch(kernel, 2, 8, (w, 100, 8), 4, 96, "cuda:0", 16)        # decided once
    assert tr._launch(kernel, 2, 8, (w, 100, 8), 4, 96, "cuda:0", 64)        # 40 <= 64: capped
    assert calls == [("compile", 96), ("compile", 0), ("launch", 0), ("launch", 0), ("compile", 96),
                     ("launch", 96)]


def test_causal_settings_changed_between_forward_and_backward(monkeypatch):
    """The backward pass slices the sequences as its forward pass did, even if the launch settings change between
    the two (a benchmark or a sweep switching them)."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "FUSED", True)
    monkeypatch.setattr(ct, "PROGRAMS", 3)
    B, T, H, D = 2, 19, 2, 16
    w, temp, bias = leaf(B, T, H * D), leaf(H, rand=True, offset=0.5), leaf(H, T, scale=0.1)
    y, s = causal_tssa(w, temp, bias, H, backend="triton")
    monkeypatch.setattr(ct, "FUSED", False)
    monkeypatch.setattr(ct, "PROGRAMS", 1024)
    monkeypatch.setattr(ct, "L2_GROUP", 1)
    g, _ = grads([y, *s], [w, temp, bias])
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H)
    gr, _ = grads([yr, *sr], [w, temp, bias])
    for name, a, b in zip(["w", "temp", "bias"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name != "w" else 1e-4, atol=1e-6)


@pytest.fixture
def launches(monkeypatch):
    """(kernel, keyword options) of every kernel launch, recorded under the interpreter."""
    if DEVICE != "cpu":
        pytest.skip("records the interpreter's launches")
    from triton.runtime.interpreter import InterpretedFunction
    seen, run = [], InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        seen.append((self.__name__, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)
    monkeypatch.setattr(InterpretedFunction, "run", record)
    return seen


@pytest.mark.skipif(DEVICE != "cuda", reason="thousands of chunk programs run at once on a GPU only")
def test_linear_attention_chunks_in_parallel_at_the_benchmark_shape_on_gpu(monkeypatch):
    """PARALLEL at B8·T4096·H12·D64 in bf16 with a carried state (6,144 chunk programs): output, final state and every
    gradient against fp64, within the walked scheme's own error."""
    from tost_edge.ops.triton import linear_attention as la_mod
    B, T, H, D = 8, 4096, 12, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = [torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3)]
    s0 = [torch.rand(B, H, D, D, device="cuda", generator=g), torch.rand(B, H, D, device="cuda", generator=g)]
    cot = torch.randn(B, T, H, D, device="cuda", generator=g).to(torch.bfloat16)
    results = {}
    for scheme in ("walked", "parallel", "fp64"):
        monkeypatch.setattr(la_mod, "PARALLEL", scheme == "parallel")
        leaves = [(x.double() if scheme == "fp64" else x).clone().requires_grad_() for x in qkv + s0]
        fn = naive_causal_linear_attention if scheme == "fp64" else \
            lambda *a: causal_linear_attention(*a, backend="triton")
        y, s = fn(*leaves[:3], LinearAttentionState(*leaves[3:]))
        loss = (y * cot.to(y.dtype)).sum() + s.kv.sum() + s.k_sum.sum()
        results[scheme] = [y, *s, *torch.autograd.grad(loss, leaves)]
    names = ["y", "kv", "k_sum", "dq", "dk", "dv", "dkv0", "dk_sum0"]
    for name, walked, parallel, ref in zip(names, results["walked"], results["parallel"], results["fp64"]):
        err = lambda x: ((x.double() - ref).norm() / ref.norm()).item()   # noqa: E731
        assert err(parallel) <= max(1.5 * err(walked), 1e-5), (name, err(parallel), err(walked))


def unfused(seen):
    assert seen, "no kernel launched"
    return sorted({name for name, options in seen if options.get("enable_fp_fusion") is not True})


def test_every_tssa_launch_asks_for_fused_multiply_adds(tssa_launch, launches):
    """Each launch asks for FFMA contraction, which Triton 3.10 stops doing by default: the kernels' instruction
    counts and rounding were measured with it."""
    w, temp = leaf(2, 9, 32), leaf(2, rand=True, offset=0.5)
    tssa(w, temp, 2, backend="triton").sum().backward()
    assert unfused(launches) == []


def test_every_causal_launch_asks_for_fused_multiply_adds(causal_launch, launches):
    w, temp, bias = leaf(2, 9, 32), leaf(2, rand=True, offset=0.5), leaf(2, 14, scale=0.1)
    y, s = causal_tssa(w, temp, bias, 2, backend="triton")
    (y.sum() + s.sum_wsq.sum()).backward()
    assert unfused(launches) == []


def test_every_linear_attention_launch_asks_for_fused_multiply_adds(linear_split, launches):
    q, k, v = leaf(1, 9, 2, 16), leaf(1, 9, 2, 16), leaf(1, 9, 2, 16)
    y, _ = causal_linear_attention(q, k, v, backend="triton")
    y.sum().backward()
    assert unfused(launches) == []


@pytest.mark.parametrize("H,bwd_unroll,bwd_warps,expected",
                         [(12, 4, 8, 4), (20, 4, 8, 4), (20, 0, 8, 4), (12, 0, 8, 8), (12, 0, 4, 4), (20, 4, 4, 2),
                          (20, 4, 2, 1), (2, 4, 8, 4), (2, 16, 8, 8)],
                         ids=["H12-steps4", "H20-steps4", "H20-steps-of-UNROLL-capped", "H12-steps-of-UNROLL",
                              "H12-4warps-capped", "H20-4warps-capped", "H20-2warps-capped", "small-heads-uncapped",
                              "small-heads-at-most-8"])
def test_causal_backward_steps_are_capped_by_the_heads(monkeypatch, H, bwd_unroll, bwd_warps, expected):
    """The walked backward takes BWD_UNROLL tokens a step (UNROLL where 0) but at most 32 padded elements a thread of
    each token tensor (wider rows, H20, or fewer warps take fewer tokens a step) and at most 8 tokens."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "BWD_TILED", False)
    monkeypatch.setattr(ct, "UNROLL", 8)
    monkeypatch.setattr(ct, "BWD_UNROLL", bwd_unroll)
    monkeypatch.setattr(ct, "BWD_WARPS", bwd_warps)
    plan = ct._plan(8, 4096, H, 64, 2)
    assert plan[5] == expected and plan[14] == bwd_warps, plan


@pytest.mark.parametrize("fused", [False, True], ids=["three-passes", "fused"])
def test_causal_register_caps_reach_their_direction(monkeypatch, fused, launches):
    """TILED_MAXNREG caps the tiled forward's launches and BWD_MAXNREG the backward's, each only its own (the scans
    between passes are never capped)."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "FUSED", fused)
    monkeypatch.setattr(ct, "TILED", True)
    monkeypatch.setattr(ct, "TILED_MAXNREG", 168)
    monkeypatch.setattr(ct, "BWD_MAXNREG", 128)
    w, temp, bias = leaf(2, 9, 32), leaf(2, rand=True, offset=0.5), leaf(2, 14, scale=0.1)
    y, s = causal_tssa(w, temp, bias, 2, backend="triton")
    forward = len(launches)
    (y.sum() + s.sum_wsq.sum()).backward()
    caps = lambda seen: {name: options.get("maxnreg") for name, options in seen}  # noqa: E731
    walks = lambda seen: {cap for name, cap in caps(seen).items() if name != "_slice_scan"}  # noqa: E731
    assert walks(launches[:forward]) == {168} and walks(launches[forward:]) == {128}, caps(launches)
    assert caps(launches).get("_slice_scan") is None


@pytest.mark.parametrize("fused", [False, True], ids=["three-passes", "fused"])
def test_causal_backward_steps_of_eight_tokens(monkeypatch, fused):
    """Narrow rows let the walked backward take 8 tokens a step (stage 2 keeps each token's d S factor until the
    step's softmax over heads): every gradient against fp64, a partial last step included (T = 21)."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "FUSED", fused)
    monkeypatch.setattr(ct, "BWD_TILED", False)
    monkeypatch.setattr(ct, "BWD_UNROLL", 8)
    monkeypatch.setattr(ct, "PROGRAMS", 2)
    B, T, H, D = 2, 21, 2, 32
    assert ct._plan(B, T, H, D, 4)[5] == 8
    w, temp, bias = leaf(B, T, H * D), leaf(H, rand=True, offset=0.5), leaf(H, T + 3, scale=0.1)
    y, s = causal_tssa(w, temp, bias, H, None, 2, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H, None, 2)
    g, _ = grads([y, *s], [w, temp, bias])
    gr, _ = grads([yr, *sr], [w, temp, bias])
    for name, a, b in zip(["w", "temp", "denom_bias"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name != "w" else 1e-4, atol=1e-6)


D_S_SHAPES = pytest.mark.parametrize("T,D,H,programs,first", [(20, 128, 3, 1024, 1e-3), (37, 32, 5, 3, 1e-2)],
                                     ids=["D128-one-slice", "D32-slices"])


@pytest.mark.parametrize("bwd_tiled", [False, True], ids=["walked", "tiled"])
@pytest.mark.parametrize("fused", [False, True], ids=["three-passes", "fused"])
@pytest.mark.parametrize("fp64", [True, False], ids=["fp64", "fp32-pairs"])
@D_S_SHAPES
def test_causal_backward_sums_of_d_S_in_fp64_or_fp32_pairs(monkeypatch, fused, fp64, T, D, H, programs, first,
                                                           bwd_tiled):
    """At a sequence's first token d S dwarfs the later tokens' (S = w^2 there; here the first token is 100 or 1000
    times smaller than the others), so the backward's sums of it cancel, walked or a tile at a time: in fp64, or in
    pairs of fp32 (what runs on GPUs with slow fp64), every gradient stays as close to fp64 as elsewhere (walked sums
    in plain fp32: dw 6e-3 and 1e-2 off here, against 1e-6 and 3e-7)."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "FUSED", fused)
    monkeypatch.setattr(ct, "BWD_TILED", bwd_tiled)
    monkeypatch.setattr(ct, "PROGRAMS", programs)
    check_first_token_d_S(monkeypatch, fp64, T, D, H, first)


@pytest.mark.parametrize("chunk", [4, 16], ids=lambda c: f"chunks-of-{c}")
@pytest.mark.parametrize("fp64", [True, False], ids=["fp64", "fp32-pairs"])
@D_S_SHAPES
def test_chunked_causal_backward_sums_of_d_S(monkeypatch, fp64, T, D, H, programs, first, chunk):
    """The same for CHUNKED, whose walks carry d S from a chunk's start less what they passed, a tile at a time."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "CHUNKED", True)
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", chunk)
    check_first_token_d_S(monkeypatch, fp64, T, D, H, first)


def check_first_token_d_S(monkeypatch, fp64, T, D, H, first):
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "SUFFIX_FP64", fp64)
    assert ct._plan(2, T, H, D, 4)[16] == int(fp64)
    gen = torch.Generator().manual_seed(T)
    w = torch.randn(2, T, H * D, generator=gen, dtype=torch.float64)
    w[:, 0] *= first
    w = w.to(DEVICE).float().requires_grad_()
    temp = (torch.rand(H, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE).float().requires_grad_()
    bias = (0.1 * torch.randn(H, T, generator=gen, dtype=torch.float64)).to(DEVICE).float().requires_grad_()
    y, s = causal_tssa(w, temp, bias, H, backend="triton")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H)
    g, _ = grads([y, *s], [w, temp, bias])
    gr, _ = grads([yr, *sr], [w, temp, bias])
    for name, a, b in zip(["w", "temp", "denom_bias"], g, gr):
        assert_close(f"d{name}", b, a, 3e-3 if name != "w" else 1e-4, atol=1e-6)


@pytest.mark.parametrize("capability,fp64", [((9, 0), 1), ((8, 0), 1), ((10, 0), 1), ((8, 7), 0), ((8, 9), 0),
                                             ((11, 0), 0), ((12, 1), 0)])
def test_causal_backward_sums_d_S_in_fp64_where_the_gpu_runs_it_fast(monkeypatch, capability, fp64):
    """SUFFIX_FP64 = None decides by the device: fp64 on the data-centre parts, fp32 pairs on Orin (sm_87), Thor
    (sm_110) and the consumer parts; the interpreter's CPU tensors take fp64; a setting overrides the device."""
    from tost_edge.ops.triton import causal_tssa as ct, utils
    monkeypatch.setattr(ct, "SUFFIX_FP64", None)
    monkeypatch.setattr(utils.torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=capability[0], minor=capability[1]))
    monkeypatch.setattr(utils.torch.version, "hip", None)
    assert ct._plan(1, 64, 12, 64, 2, torch.device("cuda", 0))[16] == fp64
    assert ct._plan(1, 64, 12, 64, 2, torch.device("cpu"))[16] == 1
    monkeypatch.setattr(ct, "SUFFIX_FP64", not fp64)
    assert ct._plan(1, 64, 12, 64, 2, torch.device("cuda", 0))[16] == int(not fp64)


@pytest.mark.parametrize("fwd_tiled", [True, False], ids=["tiled-forward", "tiled-backward"])
def test_causal_tiled_in_one_direction(monkeypatch, fwd_tiled):
    """A tiled forward with a token-walk backward and the other way round (the two are chosen separately), with
    tiles of unequal sizes in the two directions and a register cap on the tiled forward's launch."""
    from tost_edge.ops.triton import causal_tssa as ct
    monkeypatch.setattr(ct, "TILED", fwd_tiled)
    monkeypatch.setattr(ct, "BWD_TILED", not fwd_tiled)
    monkeypatch.setattr(ct, "TILED_MAXNREG", 168)             # a register cap for the tiled forward
    monkeypatch.setattr(ct, "PROGRAMS", 3)
    monkeypatch.setattr(ct, "UNROLL", 8)
    monkeypatch.setattr(ct, "BWD_UNROLL", 2)
    check_causal_with_state(2, 37, 3, 16, torch.tensor([2, 0], device=DEVICE))


@pytest.mark.parametrize("warps", [0, 4], ids=["P-per-head", "P-per-channel"])
@pytest.mark.parametrize("tiles", [(8, 4), (4, 2)], ids=["tiles8-4", "tiles4-2"])
def test_causal_tiles_with_triangular_head_sums(monkeypatch, tiles, warps):
    """The per-head cumulative sums of the tiles as sums under a triangular mask (SCAN_HEADS off: what Triton before
    3.9 compiles), forward and backward, against the reference; with 4 warps the forward's output loop carries P per
    channel instead (tiles.p_channels)."""
    from tost_edge.ops.triton import causal_tssa as ct, causal_tssa_tiles as tiles_mod
    monkeypatch.setattr(tiles_mod, "SCAN_HEADS", False)
    monkeypatch.setattr(ct, "TILED_WARPS", warps)
    assert tiles_mod.p_channels(ct._plan(2, 37, 3, 16, 4)[12]) == (warps == 4)
    monkeypatch.setattr(ct, "TILED", True)
    monkeypatch.setattr(ct, "BWD_TILED", True)
    monkeypatch.setattr(ct, "PROGRAMS", 3)
    monkeypatch.setattr(ct, "UNROLL", tiles[0])
    monkeypatch.setattr(ct, "BWD_UNROLL", tiles[1])
    check_causal_with_state(2, 37, 3, 16, torch.tensor([2, 0], device=DEVICE))


def test_batches_past_32bit_offsets_run_in_parts(monkeypatch):
    """The kernels address memory with 32-bit offsets: a batch whose tensors would pass them runs in parts of
    consecutive batch elements (here with the limit lowered so that each batch element is a part), giving the
    results, final states and gradients of one call; one batch element past the limit is a clear error."""
    from tost_edge.ops.triton import causal_tssa as ct_mod, linear_attention as la_mod, tssa as tt_mod, utils
    B, T, H, D = 3, 9, 2, 16
    w, temp, bias = leaf(B, T, H * D), leaf(H, rand=True, offset=0.5), leaf(H, T + 5, scale=0.1)
    s0 = [leaf(B, H, D, rand=True), leaf(B, H, D, rand=True), leaf(B, H, rand=True)]
    q, k, v = leaf(B, T, H, D), leaf(B, T, H, D), leaf(B, T, H, D)
    kv0, ks0 = leaf(B, H, D, D, rand=True), leaf(B, H, D, rand=True)
    pos = torch.tensor([0, 3, 1], device=DEVICE)
    calls = {
        "tssa": lambda: [tssa(w, temp, H, backend="triton")],
        "causal_tssa": lambda: (lambda y, s: [y, *s])(*causal_tssa(w, temp, bias, H, CausalTSSAState(*s0), pos,
                                                                   backend="triton")),
        "linear_attention": lambda: (lambda y, s: [y, *s])(*causal_linear_attention(
            q, k, v, LinearAttentionState(kv0, ks0), backend="triton")),
    }
    inputs = {"tssa": [w, temp], "causal_tssa": [w, temp, bias, *s0], "linear_attention": [q, k, v, kv0, ks0]}
    modules = {"tssa": tt_mod, "causal_tssa": ct_mod, "linear_attention": la_mod}
    for name, call in calls.items():
        whole = call()
        g_whole, _ = grads(whole, inputs[name])
        runs = []
        monkeypatch.setattr(modules[name], "batch_runs", lambda *a: runs.append(utils.batch_runs(*a)) or runs[-1])
        monkeypatch.setattr(utils, "MAX_OFFSET", T * H * D)          # one batch element a part
        parts = call()
        g_parts, _ = grads(parts, inputs[name])
        monkeypatch.undo()
        assert len(runs[0]) == B, runs
        for i, (a, b) in enumerate(zip(whole + list(g_whole), parts + list(g_parts))):
            assert_close(f"{name} output/gradient {i}", a, b, 1e-6, atol=1e-7)
    monkeypatch.setattr(utils, "MAX_OFFSET", T * H * D - 1)
    with pytest.raises(ValueError, match=r"w has 288 elements per batch element.*32-bit"):
        tssa(w, temp, H, backend="triton")


def test_linear_attention_chunks_in_parallel_count_their_states_in_the_32bit_offsets(monkeypatch):
    """PARALLEL keeps the fp32 state of every chunk ([B, H, chunks, D, M]), which can outgrow q, k and v: the batch
    runs are cut by the larger of the two, and the error names the states."""
    from tost_edge.ops.triton import linear_attention as la_mod, utils
    B, T, H, D = 2, 9, 2, 16       # one chunk: states of H * D * D = 512 elements a batch element, q's 288
    q = leaf(B, T, H, D)
    monkeypatch.setattr(utils, "MAX_OFFSET", 511)
    monkeypatch.setattr(la_mod, "PARALLEL", True)
    with pytest.raises(ValueError, match=r"the chunks' states \(PARALLEL\) has 512 elements per batch element"):
        causal_linear_attention(q, q, q, backend="triton")
    runs = []
    monkeypatch.setattr(la_mod, "batch_runs", lambda *a: runs.append(utils.batch_runs(*a)) or runs[-1])
    monkeypatch.setattr(utils, "MAX_OFFSET", 512)
    y, s = causal_linear_attention(q, q, q, backend="triton")
    assert len(runs[0]) == B
    monkeypatch.setattr(la_mod, "PARALLEL", False)
    y1, s1 = causal_linear_attention(q, q, q, backend="triton")     # the walked chunks keep no states: 288 fit
    assert len(runs[-1]) == 1
    assert_close("y", y1, y, 1e-6)
    assert_close("state.kv", s1.kv, s.kv, 1e-6)


@pytest.mark.parametrize("spills,expected", [((0, 0, 0), False), ((120, 0, 0), True), ((32, 0, 136), False),
                                             ((16, 0, 0), False)],
                         ids=["none-spill", "one-spills-two-do-not", "two-spill-more", "within-the-allowance"])
def test_parallel_backward_in_two_kernels_where_they_spill_less(monkeypatch, spills, expected):
    """PARALLEL_BWD_SPLIT = None decides from the compiled kernels (once per specialisation): two kernels where the
    one doing d q, d k and d v spills more than the allowance and the two spill less; the setting overrides."""
    from types import SimpleNamespace
    from tost_edge.ops.triton import linear_attention_chunks as lch
    compiled = []

    class Kernel:
        def warmup(self, *args, grid, **options):
            compiled.append(args[-1])
            return SimpleNamespace(_init_handles=lambda: None, n_spills=spills[args[-1]])

    monkeypatch.setattr(lch, "_b_chunks", Kernel())
    monkeypatch.setattr(lch, "interpreting", lambda: False)
    monkeypatch.setattr(lch, "_SPLIT", {})
    args = (torch.zeros(2), 9, 1e-6, 1, 2, 16, 16, 16, 16, 64, "tf32")
    assert lch._split(None, (2, 1), args, 8) is expected
    assert lch._split(None, (2, 1), args, 8) is expected and compiled == [0, 1, 2]      # decided once
    longer = (torch.zeros(2), 130, 1e-6, 3, 2, 16, 16, 16, 16, 64, "tf32")                # another length
    assert lch._split(None, (2, 3), longer, 8) is expected and compiled == [0, 1, 2]
    assert lch._split(True, (2, 1), args, 8) is True and lch._split(False, (2, 1), args, 8) is False


def test_tssa_autotuning_resets_only_its_own_statistics(monkeypatch):
    """With several configs each pass is timed repeatedly before it runs for real: every autotuner must zero the
    statistics its pass accumulates, and nothing another pass produced (on a GPU this decides the results)."""
    import triton
    from tost_edge.ops.triton import tssa as tt
    from tost_edge.ops.triton.utils import cpu_timer

    configs = [triton.Config({"TILE": t}, num_warps=4) for t in (2048, 4096)]
    monkeypatch.setattr(tt, "KERNELS", tt.autotuned(configs, do_bench=cpu_timer))
    check_tssa(leaf(2, 37, 4 * 16), leaf(4, rand=True, offset=0.5), 4)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@settings(max_examples=8, deadline=None, derandomize=True)
@given(B=st.integers(1, 3), T=st.sampled_from([1, 2, 3, 5, 17, 40]), H=st.integers(1, 5),
       D=st.sampled_from([32, 48, 64]), programs=st.sampled_from([1, 3, 7, 1024]), unroll=st.sampled_from([1, 2, 4, 8]),
       with_state=st.booleans(), fused=st.booleans(), chunk=st.sampled_from([0, 0, 2, 8]),
       tile=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
@example(B=2, T=17, H=4, D=48, programs=3, unroll=2, with_state=True, fused=False, chunk=8, tile=4, seed=1)
def test_causal_tssa_random_shapes_as_accurate_as_fp32_torch(B, T, H, D, programs, unroll, with_state, fused, chunk,
                                                             tile, seed):
    """Random shapes, slicings, unrolls, chunks (CHUNKED where chunk > 0, in tiles of `tile` tokens both ways) and
    start positions: every output and gradient of the kernels is as close to fp64 as fp32 PyTorch's own (dtemp and
    dbias are ill-conditioned in fp32 at some inputs, for both)."""
    from tost_edge.ops.triton import causal_tssa as ct
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(B, T, H * D, generator=g, dtype=torch.float64)
    temp = torch.rand(H, generator=g, dtype=torch.float64) + 0.5
    bias = 0.1 * torch.randn(H, T + 5, generator=g, dtype=torch.float64)
    s0 = [torch.rand(B, H, D, generator=g, dtype=torch.float64), torch.rand(B, H, D, generator=g, dtype=torch.float64),
          torch.rand(B, H, generator=g, dtype=torch.float64)] if with_state else []
    pos = torch.randint(0, 5, (B,), generator=g)
    results = {}
    old = (ct.PROGRAMS, ct.UNROLL, ct.FUSED, ct.CHUNKED, ct.CHUNKED_TOKENS, ct.CHUNKED_TILE, ct.CHUNKED_BWD_TILE)
    ct.PROGRAMS, ct.UNROLL, ct.FUSED = programs, unroll, fused
    ct.CHUNKED, ct.CHUNKED_TOKENS = chunk > 0, chunk or ct.CHUNKED_TOKENS
    ct.CHUNKED_TILE = ct.CHUNKED_BWD_TILE = tile
    try:
        for name, dt, backend in (("ref", torch.float64, "torch"), ("torch32", torch.float32, "torch"),
                                  ("triton", torch.float32, "triton")):
            leaves = [x.to(DEVICE, dt).requires_grad_() for x in [w, temp, bias, *s0]]
            state = CausalTSSAState(*leaves[3:]) if with_state else None
            y, s = causal_tssa(*leaves[:3], H, state, pos.to(DEVICE), backend=backend)
            cg = torch.Generator().manual_seed(seed + 1)
            cot = [torch.randn(o.shape, generator=cg, dtype=torch.float64).to(DEVICE, dt) for o in [y, *s]]
            results[name] = [y, *s, *torch.autograd.grad([y, *s], leaves, cot)]
    finally:
        ct.PROGRAMS, ct.UNROLL, ct.FUSED, ct.CHUNKED, ct.CHUNKED_TOKENS, ct.CHUNKED_TILE, ct.CHUNKED_BWD_TILE = old
    names = ["y", "S", "A", "P", "dw", "dtemp", "dbias", "dS0", "dA0", "dP0"]
    for name, ref, t32, tri in zip(names, results["ref"], results["torch32"], results["triton"]):
        err, base = _rel(tri, ref), _rel(t32, ref)
        assert err <= 10 * base + 1e-5, f"{name}: triton rel err {err:.1e}, fp32 torch {base:.1e}"


@pytest.mark.parametrize("parallel", [False, True], ids=["walked-chunks", "chunks-in-parallel"])
def test_linear_attention_fp16_state_past_fp16_range(monkeypatch, parallel):
    """A long fp16 stream whose state passes 65504 (fp16's largest value): the state dots run as fp32, so the
    output and the gradients stay finite and close to fp64."""
    from tost_edge.ops.triton import linear_attention as la_mod
    monkeypatch.setattr(la_mod, "PARALLEL", parallel)
    g = torch.Generator().manual_seed(0)
    B, T, H, D = 1, 2300, 1, 16
    q, k, v = ((torch.randn(B, T, H, D, generator=g) * sd + m).to(DEVICE, torch.float16).requires_grad_()
               for m, sd in ((0.0, 1.0), (5.0, 0.5), (5.0, 3.0)))
    y, s = causal_linear_attention(q, k, v, backend="triton")
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    yr, sr = naive_causal_linear_attention(q64, k64, v64)
    assert sr.kv.abs().max() > 65504
    assert_close("y", yr, y, 3e-3)
    assert_close("state.kv", sr.kv, s.kv, 3e-3)
    cot = torch.randn(y.shape, generator=g, dtype=torch.float64)
    g16 = torch.autograd.grad(y, [q, k, v], cot.to(DEVICE, torch.float16))
    g64 = torch.autograd.grad(yr, [q64, k64, v64], cot.to(DEVICE))
    # dq = sum_j (do_i . (v_j - y_i)) phi(k_j) phi'(q_i), and y_i is the phi(k)-weighted mean of the v_j: the sum
    # cancels to ~1/100 of its terms here, so its error is that of 10-bit-mantissa dots scaled up accordingly
    for name, a, b in zip("qkv", g16, g64):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        assert_close(f"d{name}", b, a, 0.15 if name == "q" else 1e-2)
