"""Models: ToST vision, causal ToST LM, linear-attention LM and softmax baselines.

    from tost_edge import models
    model = models.create("tost_lm_tiny")            # any name of models.list_models()
    model = models.create("tost_lm_base", unbounded=True)
"""
from __future__ import annotations

from typing import List

from .lm import GPTLM, CausalLM, LinearAttentionLM, LMConfig, ToSTLM, ToSTLMConfig
from .packing import PackedDocuments, pack_documents, pack_rows
from .registry import REGISTRY
from .video import ToSTVideo
from .vision import ToSTVision


def list_models(kind: str | None = None) -> List[str]:
    return [n for n, e in REGISTRY.items() if kind is None or e.kind == kind]


def create(name: str, **overrides):
    """Build a registry model with random weights; keyword overrides replace configuration fields."""
    if name not in REGISTRY:
        import difflib
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"model: expected a registry name (see `tost-edge models`), got {name!r}{hint}")
    entry = REGISTRY[name]
    cfg = {**entry.defaults, **overrides}
    if entry.kind == "video":
        model = entry.build(**cfg)
    elif entry.kind == "lm":
        fields = set(LMConfig.__dataclass_fields__)
        bad = sorted(set(cfg) - fields)
        if bad:
            raise ValueError(f"overrides: expected fields of LMConfig {sorted(fields)}, got unknown {bad}")
        model = entry.build(LMConfig(**cfg))
    else:
        model = entry.build(**cfg)
    model.registry_name = name
    return model


__all__ = ["create", "list_models", "REGISTRY", "ToSTVision", "ToSTLM", "ToSTLMConfig", "LMConfig", "CausalLM",
           "LinearAttentionLM", "GPTLM", "ToSTVideo", "pack_documents", "pack_rows",
           "PackedDocuments"]
