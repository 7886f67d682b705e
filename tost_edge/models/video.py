"""ToSTVideo: a ToST vision frame encoder followed by a causal ToST over frame embeddings.

Each frame is encoded on its own (bidirectional TSSA over its patches); the temporal model carries an fp32
state across frames, so a video stream costs the same per frame however long it runs.

    model = models.create("tost_video_test")
    logits = model(frames [B, T, 3, H, W])                  # [B, T, num_classes], causal over frames
    logits = model(frames [1, total, 3, H, W], cu_seqlens=cu)  # clips packed end to end, each as if alone
    logits, state = model.step(frame [B, 3, H, W], state)   # one frame per stream
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .lm import CausalLM, CausalTSSAAttention, LMConfig
from .vision import ToSTVision


class ToSTVideo(CausalLM):
    attn_cls = CausalTSSAAttention
    family = "tost"
    kind = "video"
    step_input_rank = 4  # frames [B, 3, H, W]
    packed_input = ("frames", "[1, total, 3, H, W]")

    def __init__(self, encoder: dict, num_classes: int = 10, n_layer: int = 2, n_head: int = 4, n_embd: int = 64,
                 block_size: int = 1024, bias: bool = True, dropout: float = 0.0, unbounded: bool = False):
        self.encoder_config = dict(encoder)
        super().__init__(LMConfig(block_size=block_size, vocab_size=num_classes, n_layer=n_layer, n_head=n_head,
                                  n_embd=n_embd, bias=bias, dropout=dropout, unbounded=unbounded))
        self.config_dict = dict(encoder=dict(encoder), num_classes=num_classes, n_layer=n_layer, n_head=n_head,
                                n_embd=n_embd, block_size=block_size, bias=bias, dropout=dropout, unbounded=unbounded)

    def _input_modules(self, config: LMConfig) -> dict:
        enc = ToSTVision(**{**self.encoder_config, "num_classes": 0})
        return dict(encoder=enc, proj=nn.Linear(enc.embed_dim, config.n_embd))

    @property
    def img_size(self) -> int:
        return self.encoder_config["img_size"]

    def _check_input(self, frames: torch.Tensor) -> None:
        s = self.img_size
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (3, s, s) or not frames.dtype.is_floating_point:
            raise ValueError(f"frames: expected float frames of shape [B, T, 3, {s}, {s}], "
                             f"got {frames.dtype} shape {tuple(frames.shape)}")

    def _embed(self, frames: torch.Tensor) -> torch.Tensor:
        B, T = frames.shape[0], frames.shape[1]
        feats = self.transformer.encoder.features(frames.reshape((-1,) + tuple(frames.shape[2:])))  # [B*T, E]
        return self.transformer.proj(feats).reshape(B, T, -1)                                   # [B, T, C]

    def to_dict(self) -> dict:
        return dict(self.config_dict)


def _video_config(model) -> dict:
    return model.config_dict
