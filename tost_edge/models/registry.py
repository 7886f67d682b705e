"""Model registry: official ToST names, their softmax / linear-attention counterparts and small test sizes."""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

from .lm import GPTLM, LinearAttentionLM, LMConfig, ToSTLM
from .video import ToSTVideo
from .vision import ToSTVision


class Entry(NamedTuple):
    kind: str          # "vision" | "lm" | "video"
    build: Callable
    defaults: dict
    description: str


REGISTRY: Dict[str, Entry] = {}


def register(name: str, kind: str, build: Callable, description: str, **defaults) -> None:
    REGISTRY[name] = Entry(kind, build, defaults, description)


# Vision: the names the official tost_vision/tost.py defines (eta 1.0 for depth 12, 1e-5 for depth 24)
_VISION = {"tiny": (192, 4), "small": (384, 8), "medium": (512, 8), "large": (768, 16)}
_OFFICIAL_VISION = [("tiny", 12), ("small", 12), ("tiny", 24), ("small", 24), ("medium", 24), ("large", 24)]
for _size, _depth in _OFFICIAL_VISION:
    for _patch in (16, 8):
        _dim, _heads = _VISION[_size]
        _cfg = dict(patch_size=_patch, embed_dim=_dim, depth=_depth, num_heads=_heads, mlp_ratio=4, qkv_bias=True,
                    eta=1.0 if _depth == 12 else 1e-5, tokens_norm=True)
        register(f"tost_cab_{_size}_{_depth}_p{_patch}", "vision", ToSTVision, "ToST vision (official)", **_cfg)
        register(f"vit_cab_{_size}_{_depth}_p{_patch}", "vision", ToSTVision, "softmax ViT baseline",
                 attn="softmax", **_cfg)

_TEST_VISION = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2, qkv_bias=True,
                    num_classes=10, eta=1.0, tokens_norm=True, cls_attn_layers=1)
register("tost_cab_test", "vision", ToSTVision, "tiny ToST vision for tests and samples", **_TEST_VISION)
register("vit_cab_test", "vision", ToSTVision, "tiny softmax ViT for tests", attn="softmax", **_TEST_VISION)

# Language: official ToST LM sizes (block 1024, vocab 50304) and counterparts on the same trunk
_LM_SIZES = {"base": (12, 12, 768), "medium": (24, 16, 1024), "large": (36, 20, 1280)}
_LM_FAMILIES = {"tost_lm": (ToSTLM, "causal ToST LM"), "linear_lm": (LinearAttentionLM, "linear-attention LM"),
                "gpt_lm": (GPTLM, "softmax GPT-2 baseline (KV cache)")}
for _prefix, (_cls, _desc) in _LM_FAMILIES.items():
    for _size, (_l, _h, _e) in _LM_SIZES.items():
        register(f"{_prefix}_{_size}", "lm", _cls, _desc, block_size=1024, vocab_size=50304,
                 n_layer=_l, n_head=_h, n_embd=_e, bias=True)
    register(f"{_prefix}_tiny", "lm", _cls, f"tiny {_desc} for tests and samples", block_size=128, vocab_size=256,
             n_layer=2, n_head=4, n_embd=64, bias=True)
    register(f"{_prefix}_small", "lm", _cls, f"small {_desc} (demo size)", block_size=4096, vocab_size=256,
             n_layer=4, n_head=4, n_embd=128, bias=True)

# Video: a ToST frame encoder + causal ToST over frame embeddings
register("tost_video_test", "video", ToSTVideo, "tiny ToST video model (frame encoder + causal ToST) for tests",
         encoder=dict(_TEST_VISION), num_classes=10, n_layer=2, n_head=4, n_embd=64, block_size=256)
register("tost_video_small", "video", ToSTVideo, "small ToST video model, 64x64 frames, unbounded stream",
         encoder=dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, mlp_ratio=2, qkv_bias=True,
                      eta=1.0, tokens_norm=True, cls_attn_layers=1),
         num_classes=10, n_layer=2, n_head=4, n_embd=128, block_size=1024, unbounded=True)
