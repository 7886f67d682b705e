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
    with pytest.raises(ValueError, match=r"images: expected shape \[B, 3, H, W\], got \(2, 1, 32, 32\)"):
        models.create("tost_cab_test")(torch.randn(2, 1, 32, 32))
