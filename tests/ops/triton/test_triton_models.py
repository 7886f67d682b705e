import copy

import pytest
import torch

from tests.conftest import DEVICE
from tost_edge import models


def train(model, batches, loss_fn, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for i in range(steps):
        loss = loss_fn(model, batches[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def lm_loss(model, idx):
    logits = model(idx[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_lm_training_same_losses_as_torch(name):
    torch.manual_seed(0)
    ref = models.create(name, n_layer=1, n_embd=48, n_head=3).to(DEVICE)
    fast = copy.deepcopy(ref).set_backend("triton")
    batches = [torch.randint(0, 256, (2, 40), device=DEVICE) for _ in range(3)]
    a, b = train(ref, batches, lm_loss), train(fast, batches, lm_loss)
    assert a[-1] < a[0] + 1e-3
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x)


def packed_lm_loss(model, batch):
    """Next-token loss over documents packed end to end: a document's last token has no target."""
    idx, cu = batch
    logits = model(idx[:, :-1], cu_seqlens=cu)[0]                  # (the last document one token shorter)
    targets = idx[0, 1:].clone()
    targets[[e - 1 for e in cu[1:-1]]] = -100                       # (no document predicts the next one's start)
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)


@pytest.mark.parametrize("name", ["tost_lm_tiny", "linear_lm_tiny"])
def test_lm_training_on_packed_documents_same_losses_as_torch(name):
    """Documents of mixed lengths (1 to 70 tokens) packed into one row: the Triton kernels' one launch walks them
    all; the losses of three steps are those of the PyTorch backend."""
    torch.manual_seed(0)
    ref = models.create(name, n_layer=1, n_embd=48, n_head=3).to(DEVICE)
    fast = copy.deepcopy(ref).set_backend("triton")
    cu = [0, 1, 71, 77, 117]
    batches = [(torch.randint(0, 256, (1, cu[-1] + 1), device=DEVICE), cu) for _ in range(3)]
    a, b = train(ref, batches, packed_lm_loss), train(fast, batches, packed_lm_loss)
    assert a[-1] < a[0] + 1e-3
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x)


@pytest.mark.parametrize("resident", [False, True], ids=["tssa-passes", "tssa-resident"])
def test_vision_training_same_losses_as_torch(monkeypatch, resident):
    from tost_edge.ops.triton import tssa as tt
    monkeypatch.setattr(tt, "RESIDENT", resident)
    torch.manual_seed(0)
    ref = models.create("tost_cab_test", depth=1).to(DEVICE)
    fast = copy.deepcopy(ref).set_backend("triton")
    data = [(torch.randn(2, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (2,), device=DEVICE)) for _ in range(3)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    for x, y in zip(train(ref, data, loss), train(fast, data, loss)):
        assert abs(x - y) <= 1e-4 * abs(x)
    expected = "resident" if resident else "passes"
    assert tt.last_run == {"forward": expected, "backward": expected}


def test_vision_training_on_packed_images_same_losses_as_torch():
    """Images of mixed sizes in one list: TSSA's passes take every image's tokens in one launch each; the losses of
    three steps are those of the PyTorch backend."""
    torch.manual_seed(0)
    ref = models.create("tost_cab_test", depth=1).to(DEVICE)
    fast = copy.deepcopy(ref).set_backend("triton")
    sizes = [(32, 32), (16, 48), (32, 32), (8, 16)]
    data = [([torch.randn(3, *hw, device=DEVICE) for hw in sizes], torch.randint(0, 10, (4,), device=DEVICE))
            for _ in range(3)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    for x, y in zip(train(ref, data, loss), train(fast, data, loss)):
        assert abs(x - y) <= 1e-4 * abs(x)
