import copy

import pytest
import torch

from tost_edge import models
from tost_edge.models import io

# The official tost_cab_* state-dict keys (XCiT-style trunk): name -> shape for tost_cab_tiny_12_p16.
OFFICIAL_KEYS = {
    "cls_token": (1, 1, 192),
    "patch_embed.proj.0.0.weight": (24, 3, 3, 3),
    "patch_embed.proj.0.1.running_var": (24,),
    "patch_embed.proj.0.1.num_batches_tracked": (),
    "patch_embed.proj.6.0.weight": (192, 96, 3, 3),
    "pos_embeder.token_projection.weight": (192, 64, 1, 1),
    "blocks.0.norm1.weight": (192,),
    "blocks.0.attn.qkv.weight": (192, 192),
    "blocks.0.attn.temp": (4, 1),
    "blocks.0.attn.to_out.0.weight": (192, 192),
    "blocks.11.mlp.fc1.weight": (768, 192),
    "blocks.11.mlp.fc2.bias": (192,),
    "blocks.11.gamma1": (192,),
    "cls_attn_blocks.1.attn.qkv.weight": (576, 192),
    "cls_attn_blocks.1.attn.proj.weight": (192, 192),
    "cls_attn_blocks.1.gamma2": (192,),
    "norm.weight": (192,),
    "head.weight": (1000, 192),
}


def test_official_names_and_shapes():
    with torch.device("meta"):
        sd = models.create("tost_cab_tiny_12_p16").state_dict()
    for k, shape in OFFICIAL_KEYS.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, k
    assert len([k for k in sd if k.startswith("blocks.")]) == 12 * 15  # gamma1/2, norm1/2 (w, b), temp, qkv (w, b), to_out.0 (w, b), fc1/fc2 (w, b)


def test_registry_holds_official_vision_names():
    names = models.list_models("vision")
    for n in ["tost_cab_tiny_12_p16", "tost_cab_small_12_p8", "tost_cab_medium_24_p16", "tost_cab_large_24_p8",
              "vit_cab_small_12_p16"]:
        assert n in names


@pytest.mark.parametrize("name", ["tost_cab_test", "vit_cab_test"])
def test_forward_and_strict_reload(name, tmp_path):
    m = models.create(name).eval()
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, 10)
    torch.save({"model": m.state_dict()}, tmp_path / "c.pth")
    m2 = io.load_checkpoint(models.create(name).eval(), tmp_path / "c.pth")
    torch.testing.assert_close(m2(x), y)


def test_vision_batch_independence():
    m = models.create("tost_cab_test").eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(m(x)[1:2], m(x[1:2]), rtol=1e-5, atol=1e-6)


def test_bad_image_shape():
    with pytest.raises(ValueError, match=r"images: expected shape \[B, 3, H, W\] or a list of \[3, H, W\], got "
                                         r"\(2, 1, 32, 32\)"):
        models.create("tost_cab_test")(torch.randn(2, 1, 32, 32))


def mixed_sizes():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, *hw, generator=g) for hw in [(32, 32), (48, 16), (32, 32), (16, 64), (8, 8)]]


@pytest.mark.parametrize("tokens_norm", [True, False], ids=["tokens-norm", "cls-norm"])
@pytest.mark.parametrize("name", ["tost_cab_test", "vit_cab_test"])
def test_packed_images_as_if_each_alone(name, tokens_norm):
    """A list of images of mixed sizes: each image's logits and its share of every parameter's gradient are those
    of the image run alone (eval mode: the batch norms use their running statistics)."""
    torch.manual_seed(0)
    model = models.create(name, tokens_norm=tokens_norm).eval()
    images = mixed_sizes()
    weights = torch.randn(len(images), 10)
    packed = model(images)
    alone = torch.cat([model(im[None]) for im in images])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad((packed * weights).sum(), list(model.parameters()), allow_unused=True)
    want = torch.autograd.grad((alone * weights).sum(), list(model.parameters()), allow_unused=True)
    for (n, _), a, b in zip(model.named_parameters(), grads, want):
        if b is None:
            assert a is None or not a.any(), n
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_packed_images_of_one_size_are_the_batch():
    """In training mode images of one size share the patch embedding's batch norms, as a batch of them does."""
    torch.manual_seed(0)
    model = models.create("tost_cab_test").train()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(list(x)), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("images,match", [
    ([], r"images: expected at least one image \[3, H, W\], got an empty list"),
    ([torch.randn(3, 32, 32), torch.randn(1, 32, 32)], r"images\[1\]: expected shape \[3, H, W\], got \(1, 32, 32\)"),
    ([torch.randn(1, 3, 32, 32)], r"images\[0\]: expected shape \[3, H, W\], got \(1, 3, 32, 32\)"),
], ids=["empty", "one-channel", "batched"])
def test_bad_packed_images(images, match):
    with pytest.raises(ValueError, match=match):
        models.create("tost_cab_test")(images)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_image_gradients_are_half_those_of_it_twice(mode):
    """At batch 1 the patch embedding's gradients are right (torch 2.13's CPU batch norm backward gets them wrong,
    fp64 too, from the channels-last-strided gradient a transpose hands it; ConvPatchEmbed gives it a contiguous
    one). The reference: the image twice in a batch of 2, whose batch-norm statistics in train mode are the single
    image's, so its loss and every gradient are twice the single image's."""
    torch.manual_seed(0)
    model = models.create("tost_cab_test", depth=1)
    model = model.eval() if mode == "eval" else model.train()
    x = torch.randn(1, 3, 32, 32)
    twice = copy.deepcopy(model)
    grads = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    want = torch.autograd.grad(twice(torch.cat([x, x])).square().sum() / 2, list(twice.parameters()))
    for (n, _), a, b in zip(model.named_parameters(), grads, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)
