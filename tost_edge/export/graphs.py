"""What each exported graph computes, as small nn.Modules with flat tensor I/O, and its I/O names and axes.

LM graphs (state tensors are fp32, batch-first, one input/output pair per layer and quantity):
    full     tokens [batch, seq] int64                                   -> logits [batch, seq, vocab]
    prefill  tokens [batch, seq], pos [batch] int64, state_in.<i>.<q>    -> logits [batch, seq, vocab], state_out.<i>.<q>
    step     tokens [batch],      pos [batch] int64, state_in.<i>.<q>    -> logits [batch, vocab],      state_out.<i>.<q>
Vision graph:
    full     images [batch, 3, H, W] float                               -> logits [batch, classes]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

GRAPHS = ("full", "prefill", "step", "stream")


@dataclass
class GraphSpec:
    module: nn.Module
    args: Tuple[torch.Tensor, ...]
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]] = field(default_factory=dict)


class _LMGraph(nn.Module):
    def __init__(self, model, state_names: List[str], step: bool):
        super().__init__()
        self.model, self.state_names, self.is_step = model, state_names, step

    def forward(self, tokens, pos, *state):
        st = {"pos": pos, **dict(zip(self.state_names, state))}
        idx = tokens[:, None] if self.is_step else tokens
        logits, new = self.model._trunk(idx, st)
        if self.is_step:
            logits = logits[:, 0]
        return (logits, *[new[n] for n in self.state_names])


class _Full(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def is_lm(model) -> bool:
    from ..models.lm import CausalLM
    return isinstance(model, CausalLM)


def state_names(model) -> List[str]:
    return [n for n in model.state_spec(1) if n != "pos"]


def grows(model, name: str) -> bool:
    """KV caches grow by one entry per token; every other state tensor has a fixed size."""
    return model.family == "softmax"


def example_state(model, batch: int, prefix: int, dtype) -> Dict[str, torch.Tensor]:
    """A realistic state: the model run over a random prefix (zeros when prefix is 0)."""
    if prefix == 0:
        return model.init_state(batch)
    g = torch.Generator().manual_seed(1)
    idx = random_data(model, batch, prefix, step=False, generator=g)
    with torch.no_grad():
        return model.prefill(idx)[1]


def graph_spec(model, graph: str, batch: int = 2, seq: int = 3, prefix: int = 3) -> GraphSpec:
    if graph not in ("full", "prefill", "step"):
        raise ValueError(f"graph: expected one of full, prefill, step (or stream for a bundle), got {graph!r}")
    g = torch.Generator().manual_seed(0)
    if not is_lm(model):
        if graph != "full":
            raise ValueError(f"graph: {type(model).__name__} has no recurrent form; expected 'full', got {graph!r}")
        size = model.config["img_size"]
        images = torch.randn(batch, 3, size, size, generator=g).to(next(model.parameters()).dtype)
        return GraphSpec(_Full(model), (images,), ["images"], ["logits"],
                         {"images": {0: "batch"}, "logits": {0: "batch"}})
    name = data_name(model)
    if graph == "full":
        data = random_data(model, batch, seq, step=False, generator=g)
        return GraphSpec(_Full(model), (data,), [name], ["logits"],
                         {name: {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    names = state_names(model)
    state = example_state(model, batch, prefix, None)
    step = graph == "step"
    data = random_data(model, batch, seq, step=step, generator=g)
    ins = [name, "pos"] + [f"state_in.{n}" for n in names]
    outs = ["logits"] + [f"state_out.{n}" for n in names]
    axes = {name: {0: "batch"} if step else {0: "batch", 1: "seq"}, "pos": {0: "batch"},
            "logits": {0: "batch"} if step else {0: "batch", 1: "seq"}}
    for n in names:
        axes[f"state_in.{n}"] = {0: "batch", 2: "past"} if grows(model, n) else {0: "batch"}
        axes[f"state_out.{n}"] = {0: "batch", 2: "total"} if grows(model, n) else {0: "batch"}
    return GraphSpec(_LMGraph(model, names, step), (data, state["pos"], *[state[n] for n in names]), ins, outs, axes)


def data_name(model) -> str:
    """The name of the graph input that carries the stream's data: token ids, or video frames."""
    return "frames" if getattr(model, "kind", "lm") == "video" else "tokens"


def random_data(model, batch: int, seq: int, step: bool, generator=None) -> torch.Tensor:
    """Random stream data: token ids [B, T] ([B] for a step), or frames [B, T, 3, S, S] ([B, 3, S, S])."""
    shape = (batch,) if step else (batch, seq)
    if getattr(model, "kind", "lm") == "video":
        s = model.img_size
        dtype = next(model.parameters()).dtype
        return torch.randn(shape + (3, s, s), generator=generator).to(dtype)
    return torch.randint(0, model.config.vocab_size, shape, generator=generator)
