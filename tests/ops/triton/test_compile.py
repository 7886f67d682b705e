"""Under torch.compile each Triton op is one opaque node per direction (torch.library custom ops): the whole model
compiles with fullgraph=True, and the compiled step computes what the eager one does."""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

from tests.conftest import DEVICE
from tost_edge import models
from tost_edge.ops import causal_linear_attention, causal_linear_attention_qkvpacked, causal_tssa, tssa
from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, tssa as tt


# The same kernels on the same inputs: bit-equal under the interpreter; on a GPU the atomic sums of TSSA and the
# look-back of causal TSSA add in the order programs finish, so the last bits may differ between two runs.
SAME = dict(rtol=0, atol=0) if DEVICE == "cpu" else dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tssa_case(gen, B=2, T=9):
    w = torch.randn(B, T, 32, generator=gen)
    temp = torch.rand(2, generator=gen) + 0.5
    return (w, temp), lambda w, temp: (tssa(w, temp, 2, backend="triton"),)


def _causal_case(gen, B=2, T=9):
    w = torch.randn(B, T, 32, generator=gen)
    temp, bias = torch.rand(2, generator=gen) + 0.5, 0.1 * torch.randn(2, 16 + T, generator=gen)
    S, A, P = torch.rand(B, 2, 16, generator=gen) + 0.5, torch.rand(B, 2, 16, generator=gen), \
        torch.rand(B, 2, generator=gen) + 0.5

    def fn(w, temp, bias, S, A, P):
        y, state = causal_tssa(w, temp, bias, 2, (S, A, P), 3, backend="triton")
        return (y, *state)
    return (w, temp, bias, S, A, P), fn


def _linear_case(gen, B=2, T=9):
    q, k, v = (torch.randn(B, T, 2, 16, generator=gen) for _ in range(3))
    kv, k_sum = torch.rand(B, 2, 16, 16, generator=gen), torch.rand(B, 2, 16, generator=gen)

    def fn(q, k, v, kv, k_sum):
        y, state = causal_linear_attention(q, k, v, (kv, k_sum), backend="triton")
        return (y, *state)
    return (q, k, v, kv, k_sum), fn


def _linear_packed_case(gen, B=2, T=9):
    qkv = torch.randn(B, T, 3, 2, 16, generator=gen)
    kv, k_sum = torch.rand(B, 2, 16, 16, generator=gen), torch.rand(B, 2, 16, generator=gen)

    def fn(qkv, kv, k_sum):
        y, state = causal_linear_attention_qkvpacked(qkv, (kv, k_sum), backend="triton")
        return (y, *state)
    return (qkv, kv, k_sum), fn


CASES = {"tssa": (_tssa_case, "tost_edge.tssa_triton_forward"),
         "causal_tssa": (_causal_case, "tost_edge.causal_tssa_triton_forward"),
         "causal_linear_attention": (_linear_case, "tost_edge.causal_linear_attention_triton_forward"),
         "causal_linear_attention_qkvpacked": (_linear_packed_case,
                                               "tost_edge.causal_linear_attention_qkvpacked_triton_forward")}


def _step(fn, inputs, weights):
    """Outputs and the gradients of every input of sum(weight * output), final states included."""
    leaves = [t.detach().clone().to(DEVICE).requires_grad_() for t in inputs]
    outs = fn(*leaves)
    sum(((o.float() * wt.to(DEVICE)).sum() for o, wt in zip(outs, weights))).backward()
    return [o.detach() for o in outs], [t.grad for t in leaves]


def _nodes(fn, inputs):
    """The tost_edge ops in the graph Dynamo captures with fullgraph=True (an error if the op breaks the graph)."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if "tost_edge" in str(n.target))
        return gm.forward
    torch.compile(fn, backend=backend, fullgraph=True)(*[t.to(DEVICE) for t in inputs])
    return seen


@pytest.mark.parametrize("save_pi", [True, False], ids=["pi-saved", "pi-recomputed"])
@pytest.mark.parametrize("op", list(CASES))
def test_compiled_op_is_one_node_and_matches_eager(op, save_pi, monkeypatch):
    monkeypatch.setattr(tt, "SAVE_PI", save_pi)
    monkeypatch.setattr(ct, "SAVE_PI", save_pi)
    make, node = CASES[op]
    inputs, fn = make(torch.Generator().manual_seed(0))
    outs = fn(*[t.to(DEVICE) for t in inputs])
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outs)]
    eager_out, eager_grads = _step(fn, inputs, weights)
    compiled_out, compiled_grads = _step(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs, weights)
    for a, b in zip(eager_out + eager_grads, compiled_out + compiled_grads):
        torch.testing.assert_close(b, a, **SAME)
    assert all(g is not None and g.abs().sum() > 0 for g in compiled_grads)
    torch._dynamo.reset()
    assert _nodes(fn, inputs) == [node + ".default"]


@pytest.mark.parametrize("op", list(CASES) + ["causal_tssa-chunked", "causal_tssa-three-passes"])
def test_dynamic_shapes_compile_one_graph_for_every_length(op, monkeypatch):
    """torch.compile(dynamic=True): one graph serves the batch sizes and lengths after the first (the launch plan
    is an expression of the sizes, not a guard on each), and computes what eager calls do."""
    op, _, scheme = op.partition("-")
    monkeypatch.setattr(ct, "CHUNKED", scheme == "chunked")
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", 4)
    monkeypatch.setattr(ct, "FUSED", scheme != "three-passes")
    make = CASES[op][0]
    fn = make(torch.Generator().manual_seed(0))[1]
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    counters.clear()
    for B, T in ((4, 9), (5, 14), (7, 11)):     # (B unlike the 2 heads and the 3 of qkv: equal sizes share a symbol)
        inputs = make(torch.Generator().manual_seed(T), B, T)[0]
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i))
                   for i, o in enumerate(fn(*[t.to(DEVICE) for t in inputs]))]
        eager_out, eager_grads = _step(fn, inputs, weights)
        compiled_out, compiled_grads = _step(compiled, inputs, weights)
        for a, b in zip(eager_out + eager_grads, compiled_out + compiled_grads):
            torch.testing.assert_close(b, a, **SAME)
    assert counters["stats"]["unique_graphs"] == 1


def test_the_plan_of_a_call_holds_for_its_backward(monkeypatch):
    """Settings read when the op is called (the plan), not when its backward runs: changing them in between changes
    nothing, compiled or not."""
    inputs, fn = _causal_case(torch.Generator().manual_seed(1))
    weights = [torch.ones(o.shape) for o in fn(*[t.to(DEVICE) for t in inputs])]
    expected = _step(fn, inputs, weights)[1]
    leaves = [t.detach().clone().to(DEVICE).requires_grad_() for t in inputs]
    outs = torch.compile(fn, backend="aot_eager", fullgraph=True)(*leaves)
    monkeypatch.setattr(ct, "SAVE_PI", not ct.SAVE_PI)
    monkeypatch.setattr(ct, "FUSED", not ct.FUSED)
    monkeypatch.setattr(ct, "CHUNKED", not ct.CHUNKED)   # the saved sums are per chunk, not per slice, there
    sum((o.float() * wt.to(DEVICE)).sum() for o, wt in zip(outs, weights)).backward()
    for a, b in zip(expected, [t.grad for t in leaves]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["tssa", "causal_tssa", "causal_tssa-chunked", "causal_linear_attention",
                                "causal_linear_attention_qkvpacked"])
def test_custom_ops_pass_opcheck(op, monkeypatch):
    """torch.library.opcheck: schema, fake (meta) shapes against the real outputs, autograd registration, and the
    ops through AOT dispatch, forward and backward."""
    op, _, scheme = op.partition("-")
    monkeypatch.setattr(ct, "CHUNKED", scheme == "chunked")
    monkeypatch.setattr(ct, "CHUNKED_TOKENS", 4)
    module = {"tssa": tt, "causal_tssa": ct}.get(op, la)
    make = CASES[op][0]
    inputs, fn = make(torch.Generator().manual_seed(2))
    inputs = [t.to(DEVICE) for t in inputs]
    if op == "tssa":
        args = (inputs[0], inputs[1], 2, tt._plan())
    elif op == "causal_tssa":
        w, temp, bias, S, A, P = inputs
        args = (w, temp, bias, torch.full((2,), 3, device=DEVICE), S, A, P, 2, True, ct._plan(2, 9, 2, 16, 4), None)
    else:
        args = (*inputs, 1e-6, la._plan(16, 16), None)
    grads = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    torch.library.opcheck(la._forward_packed_op if op.endswith("qkvpacked") else module._forward_op, grads)


def _packed_fn(op):
    """(inputs for a total of 23 tokens, fn(*inputs, cu) with cu_seqlens a tensor)."""
    gen = torch.Generator().manual_seed(3)
    if op == "tssa":
        inputs = (torch.randn(1, 23, 32, generator=gen), torch.rand(2, generator=gen) + 0.5)

        def fn(w, temp, cu):
            return (tssa(w, temp, 2, backend="triton", cu_seqlens=cu, max_seqlen=16),)
    elif op == "causal_tssa":
        inputs = (torch.randn(1, 23, 32, generator=gen), torch.rand(2, generator=gen) + 0.5,
                  0.1 * torch.randn(2, 16, generator=gen))

        def fn(w, temp, bias, cu):
            y, state = causal_tssa(w, temp, bias, 2, backend="triton", cu_seqlens=cu, max_seqlen=16)
            return (y, *state)
    elif op == "causal_linear_attention":
        inputs = tuple(torch.randn(1, 23, 2, 16, generator=gen) for _ in range(3))

        def fn(q, k, v, cu):
            y, state = causal_linear_attention(q, k, v, backend="triton", cu_seqlens=cu)
            return (y, *state)
    else:
        inputs = (torch.randn(1, 23, 3, 2, 16, generator=gen),)

        def fn(qkv, cu):
            y, state = causal_linear_attention_qkvpacked(qkv, backend="triton", cu_seqlens=cu)
            return (y, *state)
    return inputs, fn


@pytest.mark.parametrize("op", ["tssa", "causal_tssa", "causal_linear_attention", "causal_linear_attention_qkvpacked"])
def test_packed_ops_compile_once_for_any_offsets(op):
    """cu_seqlens as a tensor under torch.compile(fullgraph=True): one node per direction, the offsets read on the
    device only, so other documents' lengths (as many documents) reuse the graph; outputs and gradients those of
    eager calls."""
    inputs, fn = _packed_fn(op)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    counters.clear()
    for offsets in ([0, 7, 7, 23], [0, 1, 16, 23]):
        cu = torch.tensor(offsets, device=DEVICE)
        run = lambda *xs: fn(*xs, cu)                                        # noqa: E731
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i))
                   for i, o in enumerate(run(*[t.to(DEVICE) for t in inputs]))]
        eager_out, eager_grads = _step(run, inputs, weights)
        compiled_out, compiled_grads = _step(lambda *xs: compiled(*xs, cu), inputs, weights)
        for a, b in zip(eager_out + eager_grads, compiled_out + compiled_grads):
            torch.testing.assert_close(b, a, **SAME)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    cu = torch.tensor([0, 7, 7, 23], device=DEVICE)
    assert _nodes(lambda *xs: fn(*xs, cu), inputs) == [CASES[op][1] + ".default"]


@pytest.mark.skipif(DEVICE == "cuda", reason="a device-side assert ends the CUDA context (this checks the message)")
@pytest.mark.parametrize("offsets", [[0, 9, 30], [0, 9, 7, 23], [1, 9, 23]], ids=["past-the-end", "decreasing",
                                                                                    "not-from-0"])
def test_packed_offsets_under_compile_are_checked_on_the_device(offsets):
    inputs, fn = _packed_fn("causal_linear_attention")
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    with pytest.raises(RuntimeError, match=r"cu_seqlens: expected N \+ 1 offsets from 0 to q.shape\[1\], never "
                                           r"decreasing \(checked on the device under torch.compile\)"):
        compiled(*inputs, torch.tensor(offsets))


@pytest.mark.skipif(DEVICE == "cuda", reason="a device-side assert ends the CUDA context (this checks the message)")
def test_compiled_lm_checks_its_documents_fit_the_position_tables_on_the_device():
    model = models.create("linear_lm_tiny", n_layer=1, n_embd=32, n_head=2, block_size=8).set_backend("triton")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 256, (1, 12))
    compiled(idx, cu_seqlens=torch.tensor([0, 6, 12]))
    with pytest.raises(RuntimeError, match=r"cu_seqlens: a document longer than block_size=8"):
        compiled(idx, cu_seqlens=torch.tensor([0, 3, 12]))


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_torch_backend_under_compile_says_it_needs_host_offsets(name):
    model = models.create(name, n_layer=1, n_embd=32, n_head=2, block_size=16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=r"cu_seqlens as a tensor under torch.compile needs backend='triton'"):
        compiled(torch.randint(0, 256, (1, 12)), cu_seqlens=torch.tensor([0, 6, 12]))


@pytest.mark.parametrize("op", ["tssa", "causal_tssa"])
def test_packed_tssa_under_compile_needs_max_seqlen(op):
    w = torch.randn(1, 6, 32, device=DEVICE)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def run(w, cu):
        if op == "tssa":
            return tssa(w, torch.ones(2, device=DEVICE), 2, backend="triton", cu_seqlens=cu)
        return causal_tssa(w, torch.ones(2, device=DEVICE), None, 2, backend="triton", cu_seqlens=cu)[0]

    with pytest.raises(Exception, match=r"max_seqlen: expected an int, at least the longest packed sequence"):
        run(w, torch.tensor([0, 2, 6], device=DEVICE))


@pytest.mark.parametrize("op", ["tssa", "causal_tssa", "causal_linear_attention", "causal_linear_attention_qkvpacked"])
def test_packed_custom_ops_pass_opcheck(op, monkeypatch):
    """The ops' schemas, fake shapes and autograd with packed sequences' offsets (statistics and states [N, ...])."""
    cu = torch.tensor([0, 7, 7, 23], dtype=torch.int32, device=DEVICE)
    inputs = [t.to(DEVICE) for t in _packed_fn(op)[0]]
    if op == "tssa":
        args, forward = (*inputs, 2, tt._plan(packed=True), cu, 16), tt._forward_op
    elif op == "causal_tssa":
        w, temp, bias = inputs
        S, A, P = torch.rand(3, 2, 16, device=DEVICE), torch.rand(3, 2, 16, device=DEVICE), \
            torch.rand(3, 2, device=DEVICE)
        args, forward = (w, temp, bias, torch.zeros(3, dtype=torch.long, device=DEVICE), S, A, P, 2, True,
                         ct._plan(3, 16, 2, 16, 4, torch.device(DEVICE), packed=True), cu), ct._forward_op
    else:
        states = (torch.rand(3, 2, 16, 16, device=DEVICE), torch.rand(3, 2, 16, device=DEVICE))
        plan = la._plan(16, 16)
        args = (*inputs, *states, 1e-6, plan, cu)
        forward = la._forward_packed_op if op.endswith("qkvpacked") else la._forward_op
    grads = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    torch.library.opcheck(forward, grads)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "checkpointed"])
@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_compiled_lm_training_step_matches_eager(name, checkpointing):
    """(checkpointed: the blocks' activations recomputed in the backward pass, inside the compiled graph.)"""
    torch.manual_seed(0)
    eager = models.create(name, n_layer=1, n_embd=32, n_head=2).to(DEVICE).set_backend("triton")
    compiled = copy.deepcopy(eager).set_checkpointing(checkpointing)
    idx = torch.randint(0, 256, (2, 12), device=DEVICE)
    for model in (eager, torch.compile(compiled, backend="aot_eager", fullgraph=True)):
        logits = model(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, **SAME, msg=name)


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny", "gpt_lm_tiny"])
def test_compiled_lm_on_packed_documents_compiles_once(name):
    """model(idx, cu_seqlens=tensor) under torch.compile(fullgraph=True): the documents' positions and the kernels'
    offsets come from the tensor on the device, so batches of other document lengths reuse the graph; the losses
    and gradients are eager's."""
    torch.manual_seed(0)
    eager = models.create(name, n_layer=1, n_embd=32, n_head=2, block_size=32).to(DEVICE).set_backend(
        "torch" if name.startswith("gpt") else "triton")
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 256, (1, 23), device=DEVICE)
    counters.clear()
    for offsets in ([0, 7, 7, 23], [0, 1, 20, 23]):
        cu = torch.tensor(offsets, device=DEVICE)
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            model(idx, cu_seqlens=cu).float().square().mean().backward()
        for (pname, a), b in zip(eager.named_parameters(), twin.parameters()):
            torch.testing.assert_close(b.grad, a.grad, **SAME, msg=pname)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_dynamic_shapes_compile_a_packed_model_once(name):
    """torch.compile(dynamic=True) on packed documents: one graph for rows of other totals and document counts."""
    model = models.create(name, n_layer=1, n_embd=32, n_head=2, block_size=32).to(DEVICE).set_backend("triton")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    counters.clear()
    for offsets in ([0, 7, 7, 23], [0, 10, 12, 30, 31], [0, 20, 41]):
        idx, cu = torch.randint(0, 256, (1, offsets[-1]), device=DEVICE), torch.tensor(offsets, device=DEVICE)
        torch.testing.assert_close(compiled(idx, cu_seqlens=cu), model(idx, cu_seqlens=cu), **SAME)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny", "tost_cab_test"])
def test_dynamic_shapes_compile_a_model_once(name):
    """A whole model under torch.compile(dynamic=True): one graph for three lengths (LMs) or batch sizes (vision)."""
    torch.manual_seed(0)
    small = dict(depth=1) if name == "tost_cab_test" else dict(n_layer=1, n_embd=32, n_head=2)
    model = models.create(name, **small).to(DEVICE).set_backend("triton")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    counters.clear()
    for n in (12, 20, 15):
        x = torch.randn(n // 3, 3, 32, 32) if name == "tost_cab_test" else torch.randint(0, 256, (3, n))
        torch.testing.assert_close(compiled(x.to(DEVICE)), model(x.to(DEVICE)), **SAME)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_reduce_overhead_training_compiled_on_cuda():
    """Inductor around the custom ops, the step replayed from CUDA graphs: the losses of eager training."""
    torch.manual_seed(0)
    eager = models.create("tost_lm_tiny").cuda().set_backend("triton")
    compiled = copy.deepcopy(eager)
    step = torch.compile(compiled, mode="reduce-overhead", fullgraph=True)
    losses = {}
    for name, model, params in (("eager", eager, eager.parameters()), ("compiled", step, compiled.parameters())):
        opt = torch.optim.SGD(params, lr=0.05)
        gen = torch.Generator().manual_seed(1)
        losses[name] = []
        for _ in range(4):
            idx = torch.randint(0, 256, (4, 65), generator=gen).cuda()
            loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    for a, b in zip(losses["eager"], losses["compiled"]):
        assert abs(a - b) <= 1e-4 * abs(a), losses
