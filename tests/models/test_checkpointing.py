"""Activation checkpointing (models/checkpointing.py): the same loss and gradients as without it, dropout's masks
included, the blocks' activations no longer saved for the backward pass, and each block's forward run again there."""
import copy

import pytest
import torch

from tests.conftest import DEVICE
from tost_edge import models

CASES = [("tost_lm_tiny", {"n_layer": 2, "dropout": 0.1}), ("linear_lm_tiny", {"n_layer": 2, "dropout": 0.1}),
         ("gpt_lm_tiny", {"n_layer": 2, "dropout": 0.1}), ("tost_cab_test", {"depth": 2, "drop_rate": 0.1}),
         ("tost_video_test", {})]
IDS = ["tost-lm", "linear-lm", "gpt-lm", "tost-vision", "tost-video"]


def batch(model, cu_seqlens=None):
    if cu_seqlens is not None:
        return torch.randint(0, 256, (1, cu_seqlens[-1]), device=DEVICE)                  # [1, total], packed
    if isinstance(model, models.ToSTVideo):
        return torch.randn(2, 3, 3, model.img_size, model.img_size, device=DEVICE)           # [B, T, 3, H, W]
    if isinstance(model, models.CausalLM):
        return torch.randint(0, 256, (2, 12), device=DEVICE)                                # [B, T]
    return torch.randn(2, 3, 32, 32, device=DEVICE)                                         # [B, 3, H, W]


def loss_and_grads(model, x, seed=0, **kwargs):
    torch.manual_seed(seed)                                  # dropout's masks: the same draws with and without
    model.zero_grad(set_to_none=True)
    loss = model(x, **kwargs).float().square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class SavedBytes:
    """Bytes autograd saves for the backward pass outside checkpointed regions (inside them, checkpoint keeps
    nothing but the region's inputs)."""

    def __init__(self):
        self.bytes = 0

    def pack(self, t):
        self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def attention_blocks(model):
    return model.transformer.h if isinstance(model, models.CausalLM) else model.blocks


def count_attention_calls(model, monkeypatch):
    blocks = attention_blocks(model)
    calls = []
    for i, block in enumerate(blocks):
        forward = block.attn.forward
        monkeypatch.setattr(block.attn, "forward", lambda *a, _f=forward, _i=i, **k: (calls.append(_i), _f(*a, **k))[1])
    return calls


def check(model, monkeypatch, rtol=1e-5, atol=1e-7, **kwargs):
    model.train()
    x = batch(model, **kwargs)
    plain = copy.deepcopy(model)
    ref_loss, ref_grads = loss_and_grads(plain, x, **kwargs)
    with SavedBytes() as kept:
        loss_and_grads(copy.deepcopy(model), x, **kwargs)
    model.set_checkpointing(True)
    calls = count_attention_calls(model, monkeypatch)
    loss, grads = loss_and_grads(model, x, **kwargs)
    n = len(attention_blocks(model))
    assert calls == list(range(n)) + list(reversed(range(n))), calls      # forward, then again in the backward
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol, atol=atol, msg=name)
    with SavedBytes() as checkpointed:
        loss_and_grads(model, x, **kwargs)
    return kept.bytes, checkpointed.bytes


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_checkpointing_gives_the_same_gradients_and_keeps_less(name, options, monkeypatch):
    torch.manual_seed(0)
    kept, checkpointed = check(models.create(name, **options).to(DEVICE), monkeypatch)
    assert checkpointed < kept / 2, (kept, checkpointed)


@pytest.mark.parametrize("name,options", [("tost_lm_tiny", {"n_layer": 2, "n_embd": 48, "n_head": 3}),
                                          ("linear_lm_tiny", {"n_layer": 2, "n_embd": 48, "n_head": 3}),
                                          ("tost_cab_test", {"depth": 1})], ids=["tost-lm", "linear-lm", "tost-vision"])
def test_checkpointing_with_the_triton_kernels(name, options, monkeypatch):
    """The Triton ops run their forward again in the backward pass (their autograd Functions, twice a step)."""
    torch.manual_seed(0)
    check(models.create(name, **options).to(DEVICE).set_backend("triton"), monkeypatch, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,backend", [("tost_lm_tiny", "torch"), ("linear_lm_tiny", "torch"),
                                          ("gpt_lm_tiny", "torch"), ("tost_lm_tiny", "triton"),
                                          ("linear_lm_tiny", "triton")])
def test_checkpointing_packed_documents(name, backend, monkeypatch):
    """model(idx, cu_seqlens=...) recomputes its blocks with the documents' offsets too."""
    torch.manual_seed(0)
    model = models.create(name, n_layer=2, n_embd=48, n_head=3, dropout=0.1).to(DEVICE).set_backend(backend)
    check(model, monkeypatch, rtol=1e-4, atol=1e-6, cu_seqlens=[0, 7, 7, 20])


def test_checkpointing_off_where_no_gradient_is_recorded(monkeypatch):
    model = models.create("tost_lm_tiny", n_layer=2).set_checkpointing(True).eval()
    calls = count_attention_calls(model, monkeypatch)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 5)))
        model.step(torch.zeros(1, dtype=torch.long), model.init_state(1))
    assert calls == [0, 1, 0, 1]
    assert model.set_checkpointing(False).checkpointing is False


def test_checkpointing_takes_a_bool():
    with pytest.raises(ValueError, match=r"enabled: expected True or False, got 1"):
        models.create("tost_lm_tiny").set_checkpointing(1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_checkpointing_packed_images(backend):
    """model([images of mixed sizes]) recomputes its blocks (TSSA with the images' offsets, the packed class
    attention) in the backward pass: the same gradients."""
    torch.manual_seed(0)
    model = models.create("tost_cab_test", depth=2).to(DEVICE).set_backend(backend).eval()
    images = [torch.randn(3, *hw, device=DEVICE) for hw in [(32, 32), (16, 48)]]
    ref_loss, ref_grads = loss_and_grads(copy.deepcopy(model), images)
    loss, grads = loss_and_grads(model.set_checkpointing(True), images)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
