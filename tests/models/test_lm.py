import pytest
import torch

from tost_edge import models
from tost_edge.models import io

LMS = ["tost_lm_tiny", "linear_lm_tiny", "gpt_lm_tiny"]


@pytest.fixture(params=LMS)
def lm(request):
    return models.create(request.param).eval()


@pytest.mark.parametrize("cut", [0, 1, 17])
def test_prefill_then_step_equals_forward(lm, cut):
    idx = torch.randint(0, lm.config.vocab_size, (2, 30))
    with torch.no_grad():
        full = lm(idx)
        logits, state = lm.prefill(idx[:, :cut])
        outs = [logits]
        for t in range(cut, 30):
            step_logits, state = lm.step(idx[:, t], state)
            outs.append(step_logits[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)
    assert int(state["pos"][0]) == 30
    assert all(t.dtype == torch.float32 for n, t in state.items() if n != "pos")


def test_batch_independence(lm):
    idx = torch.randint(0, lm.config.vocab_size, (3, 12))
    with torch.no_grad():
        batch = lm(idx)
        for i in range(3):
            torch.testing.assert_close(batch[i:i + 1], lm(idx[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_state_names_are_per_layer_and_quantity():
    m = models.create("tost_lm_tiny")
    assert list(m.init_state(2)) == ["pos", "0.sum_wsq", "0.sum_pi_wsq", "0.sum_pi",
                                     "1.sum_wsq", "1.sum_pi_wsq", "1.sum_pi"]
    assert m.init_state(2)["0.sum_pi"].shape == (2, 4)


def test_strict_load_of_fresh_state_dict(lm, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": lm.state_dict()}, path)
    other = models.create(lm.registry_name)
    io.load_checkpoint(other, path)
    for (k, a), b in zip(lm.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k


def test_safetensors_round_trip(lm, tmp_path):
    io.save(lm, tmp_path / "m")
    back = io.load(tmp_path / "m").eval()
    idx = torch.randint(0, lm.config.vocab_size, (1, 5))
    torch.testing.assert_close(back(idx), lm(idx))


@pytest.mark.parametrize("target", ["folder", "file"])
def test_checkpoint_saved_by_save_loads_strict(lm, tmp_path, target):
    """save() writes one name of the tied embedding / head weights; a strict load into a fresh model fills both."""
    folder = io.save(lm, tmp_path / "m")
    other = models.create(lm.registry_name).eval()
    io.load_checkpoint(other, folder if target == "folder" else folder / io.WEIGHTS_NAME)
    assert other.lm_head.weight is other.transformer.wte.weight
    for (k, a), b in zip(lm.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="a folder without model.safetensors"):
        io.load_checkpoint(other, tmp_path)


def test_official_tost_lm_state_dict_names():
    sd = models.create("tost_lm_tiny").state_dict()
    for key in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias", "transformer.h.0.attn.temp",
                "transformer.h.0.attn.denom_bias", "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.gamma1",
                "transformer.ln_f.weight", "lm_head.weight"]:
        assert key in sd, key
    assert sd["transformer.h.0.attn.denom_bias"].shape == (4, 128, 1)
    assert sd["transformer.h.0.attn.temp"].shape == (4, 1)
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (64, 64)


def test_checkpoint_mismatch_names_keys(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(models.create("tost_lm_tiny").state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys \['transformer.h.0.attn.denom_bias'"):
        io.load_checkpoint(models.create("linear_lm_tiny"), path)


def test_position_beyond_block_size_is_an_error():
    m = models.create("tost_lm_tiny", block_size=8).eval()
    _, state = m.prefill(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position: a sequence would reach position 9, beyond block_size=8"):
        m.step(torch.zeros(1, dtype=torch.long), state)


def test_unbounded_model_streams_past_block_size():
    m = models.create("tost_lm_tiny", block_size=8, unbounded=True).eval()
    assert "transformer.wpe.weight" not in m.state_dict()
    with torch.no_grad():
        full = m(torch.arange(20)[None] % 7)
        _, state = m.prefill(torch.arange(10)[None] % 7)
        logits, state = m.step(torch.tensor([10 % 7]), state)
    torch.testing.assert_close(logits, full[:, 10], rtol=1e-4, atol=1e-5)


class DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the reads of a tensor's values back to the host (on a GPU: a wait for every queued kernel):
    int() / item() as aten ops, and Tensor.tolist, which on a CPU tensor reads memory without one."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.count = 0
        tolist = torch.Tensor.tolist

        def counted(t):
            self.count += 1
            return tolist(t)
        monkeypatch.setattr(torch.Tensor, "tolist", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == "_local_scalar_dense"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,options", [("tost_lm_tiny", {}), ("tost_lm_tiny", {"unbounded": True}),
                                          ("linear_lm_tiny", {}), ("gpt_lm_tiny", {})],
                         ids=["tost", "tost-position-free", "linear", "gpt"])
def test_a_training_step_reads_nothing_back_from_the_device(name, options, monkeypatch):
    """model(idx) starts every sequence at position 0 and checks it against the position table without asking the
    device, so a training step queues its kernels without waiting once a layer; a stream's state carries positions
    (a tensor), which a position-free model's attention does not read back either."""
    m = models.create(name, **options)
    idx = torch.randint(0, 256, (2, 16))
    with DeviceReads(monkeypatch) as reads:
        m(idx).float().square().mean().backward()
    assert reads.count == 0
    if options.get("unbounded"):
        state = m.init_state(2)
        with DeviceReads(monkeypatch) as reads, torch.no_grad():
            m.prefill(idx, state)
        assert reads.count == 0


def test_bad_state_is_named():
    m = models.create("tost_lm_tiny")
    state = m.init_state(2)
    state["1.sum_pi"] = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"state\['1.sum_pi'\]: expected torch.float32 shape \(2, 4\)"):
        m.step(torch.zeros(2, dtype=torch.long), state)


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError, match="did you mean tost_lm_tiny"):
        models.create("tost_lm_tinny")


def test_training_step_reduces_loss():
    m = models.create("tost_lm_tiny")
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    idx = torch.randint(0, 256, (4, 33))
    losses = []
    for _ in range(5):
        logits = m(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def packed_case(vocab, lengths=(5, 0, 12, 13)):
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.randint(0, vocab, (1, cu[-1])), cu


def test_packed_documents_run_as_if_alone(lm):
    """model(idx [1, total], cu_seqlens): each document from position 0, attending within itself only: its logits
    and the gradients of a loss over all of them are those of the documents run one at a time."""
    idx, cu = packed_case(lm.config.vocab_size)
    packed = lm(idx, cu_seqlens=torch.tensor(cu))
    alone = [lm(idx[:, a:b]) for a, b in zip(cu, cu[1:]) if b > a]
    torch.testing.assert_close(packed, torch.cat(alone, 1), rtol=1e-5, atol=1e-6)
    params = [p for p in lm.parameters() if p.requires_grad]
    g = torch.autograd.grad(packed.square().sum(), params)
    gr = torch.autograd.grad(sum(x.square().sum() for x in alone), params, allow_unused=True)
    for name, a, b in zip([n for n, p in lm.named_parameters() if p.requires_grad], g, gr):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_video_clips_run_as_if_alone():
    m = models.create("tost_video_test").eval()
    s, cu = m.img_size, [0, 3, 7]
    frames = torch.randn(1, 7, 3, s, s)
    with torch.no_grad():
        packed = m(frames, cu_seqlens=cu)
        alone = torch.cat([m(frames[:, a:b]) for a, b in zip(cu, cu[1:])], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)


def test_packed_documents_are_checked():
    m = models.create("tost_lm_tiny", block_size=8)
    with pytest.raises(ValueError, match=r"idx: expected shape \[1, total\] with cu_seqlens"):
        m(torch.zeros(2, 6, dtype=torch.long), cu_seqlens=[0, 6])
    with pytest.raises(ValueError, match=r"cu_seqlens: a document of 9 tokens, longer than block_size=8"):
        m(torch.zeros(1, 12, dtype=torch.long), cu_seqlens=[0, 9, 12])
    m(torch.zeros(1, 16, dtype=torch.long), cu_seqlens=[0, 8, 16])          # two documents of 8 fit
    unbounded = models.create("tost_lm_tiny", block_size=8, unbounded=True)
    unbounded(torch.zeros(1, 12, dtype=torch.long), cu_seqlens=[0, 9, 12])  # no position table: any length


@pytest.mark.parametrize("name", LMS)
def test_a_packed_training_step_reads_nothing_back_from_the_device(name, monkeypatch):
    """With host offsets (a list), a packed step queues its kernels without waiting for the device."""
    m = models.create(name)
    idx, cu = packed_case(256)
    with DeviceReads(monkeypatch) as reads:
        m(idx, cu_seqlens=cu).float().square().mean().backward()
    assert reads.count == 0


def test_pack_documents_pairs_each_token_with_its_next_within_its_document():
    batch = models.pack_documents([torch.tensor([5, 6, 7]), [9], [], [1, 2]])
    assert batch.idx.tolist() == [[5, 6, 1]] and batch.targets.tolist() == [[6, 7, 2]]
    assert batch.cu_seqlens.tolist() == [0, 2, 2, 2, 3] and batch.cu_seqlens.dtype == torch.int32
    assert batch.lengths.tolist() == [2, 0, 0, 1]
    m = models.create("tost_lm_tiny").eval()
    logits = m(batch.idx, cu_seqlens=batch.cu_seqlens)
    torch.testing.assert_close(logits[:, :2], m(torch.tensor([[5, 6]])))
    with pytest.raises(ValueError, match=r"docs\[1\]: expected a 1-D integer tensor or a list of ints, got "
                                         r"torch.float32 shape \(2,\)"):
        models.pack_documents([[1, 2], torch.zeros(2)])
    with pytest.raises(ValueError, match=r"docs: expected at least one document, got none"):
        models.pack_documents([])


def test_pack_rows_fills_rows_of_equal_size_cutting_documents_where_they_must():
    docs = [list(range(10)), [50, 51], [60], list(range(100, 107))]        # 9, 1, 0 and 6 next-token pairs
    rows = list(models.pack_rows(docs, tokens=4, max_len=3))
    assert [r.idx.shape[1] for r in rows] == [4, 4, 4, 4]                   # 16 pairs in all
    pairs = [(i, t) for r in rows for i, t in zip(r.idx[0].tolist(), r.targets[0].tolist())]
    expected = [(a, b) for d in docs for a, b in zip(d, d[1:])]
    assert pairs == expected                                                # every pair once, in order
    assert all(int(r.lengths.max()) <= 3 for r in rows)                     # pieces of at most max_len
    assert [r.cu_seqlens.tolist() for r in rows] == [[0, 3, 4], [0, 3, 4], [0, 1, 2, 4], [0, 3, 4]]
    assert [r.idx.shape[1] for r in models.pack_rows(docs, tokens=5)] == [5, 5, 5, 1]   # the last row shorter
    with pytest.raises(ValueError, match=r"tokens: expected at least 1 next-token pair a row, got 0"):
        next(models.pack_rows(docs, tokens=0))
