"""Causal language models on one nanoGPT trunk: ToST (official `model_TSSA.py`, TSSA=True), causal linear
attention, and the softmax GPT-2 baseline with a KV cache. State-dict names match the official code.

Recurrent API (every model here):
    state = model.init_state(B)                      # {"pos": [B] int64, "<layer>.<quantity>": fp32 tensors}
    logits, state = model.prefill(idx [B, T], state) # logits [B, T, V]
    logits, state = model.step(idx [B], state)       # logits [B, V]

Packed documents (training without padding): model(idx [1, total], cu_seqlens=[0, n0, n0 + n1, ...]) runs each
document from position 0, attending within itself only, as if alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import tracing
from ..ops import CausalTSSAState, LinearAttentionState, causal_linear_attention_qkvpacked, causal_tssa
from ..ops.packing import packed_offsets, sequence_positions
from .checkpointing import Checkpointed

State = Dict[str, torch.Tensor]


@dataclass
class LMConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = True
    dropout: float = 0.0
    # No absolute position tables (wpe, denom_bias): streams of any length, at the price of the position
    # signal the official models train with. Official checkpoints need unbounded=False.
    unbounded: bool = False

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: expected a multiple of n_head={self.n_head}, got {self.n_embd}")

    def to_dict(self) -> dict:
        return asdict(self)


ToSTLMConfig = LMConfig


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (as nanoGPT)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class CausalTSSAAttention(nn.Module):
    """The official CausalSelfAttention_TSSA: c_attn (C -> C), causal TSSA, c_proj."""
    state_quantities = ("sum_wsq", "sum_pi_wsq", "sum_pi")

    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.temp = nn.Parameter(torch.ones(config.n_head, 1))
        if not config.unbounded:
            self.denom_bias = nn.Parameter(torch.zeros(config.n_head, config.block_size, 1))
        else:
            self.denom_bias = None
        self.backend = "torch"

    def state_shapes(self, batch: int) -> Dict[str, Tuple[int, ...]]:
        H, D = self.n_head, self.n_embd // self.n_head
        return {"sum_wsq": (batch, H, D), "sum_pi_wsq": (batch, H, D), "sum_pi": (batch, H)}

    def forward(self, x, state: Optional[State] = None, pos=0, packed: Optional[Packed] = None):
        # packed: documents end to end (x [1, total, C]), each from position 0 and a zero state
        st = None if state is None else CausalTSSAState(*(state[q] for q in self.state_quantities))
        y, st = causal_tssa(self.c_attn(x), self.temp, self.denom_bias, self.n_head, st, pos, backend=self.backend,
                            cu_seqlens=packed and packed.cu, max_seqlen=packed and packed.max_seqlen)
        return self.resid_dropout(self.c_proj(y)), dict(zip(self.state_quantities, st))


class CausalLinearAttention(nn.Module):
    """Katharopoulos et al. linear attention on the same trunk: c_attn (C -> 3C), elu+1 features, c_proj."""
    state_quantities = ("kv", "k_sum")

    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.backend = "torch"

    def state_shapes(self, batch: int) -> Dict[str, Tuple[int, ...]]:
        H, D = self.n_head, self.n_embd // self.n_head
        return {"kv": (batch, H, D, D), "k_sum": (batch, H, D)}

    def forward(self, x, state: Optional[State] = None, pos=0, packed: Optional[Packed] = None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)                 # [B, T, 3, H, D]
        st = None if state is None else LinearAttentionState(state["kv"], state["k_sum"])
        y, st = causal_linear_attention_qkvpacked(qkv, st, backend=self.backend,
                                                  cu_seqlens=packed and packed.cu)          # y: [B, T, H, D]
        return self.resid_dropout(self.c_proj(y.reshape(B, T, C))), dict(zip(self.state_quantities, st))


class Packed(NamedTuple):
    """Documents packed end to end along a batch of one: their offsets [N + 1] (host ints, or a tensor whose values
    stay on the device under torch.compile), a bound on their lengths (None: taken from host offsets), and each
    token's document [total] on the model's device (found once a call, for the layers that mask by it)."""
    cu: Union[List[int], torch.Tensor]
    max_seqlen: Optional[int] = None
    doc: Optional[torch.Tensor] = None


class CausalSoftmaxAttention(nn.Module):
    """GPT-2 attention (the baseline). Its state is a KV cache that grows by one entry per token."""
    state_quantities = ("k", "v")

    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout_p = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.backend = "torch"

    def state_shapes(self, batch: int) -> Dict[str, Tuple[int, ...]]:
        H, D = self.n_head, self.n_embd // self.n_head
        return {"k": (batch, H, 0, D), "v": (batch, H, 0, D)}

    def forward(self, x, state: Optional[State] = None, pos=0, packed: Optional[Packed] = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        if packed is not None:   # packed documents: causal within each, nothing across (a block-diagonal mask)
            mask = (packed.doc[:, None] == packed.doc[None, :]).tril()                   # [total, total]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_dropout_p
                                               if self.training else 0.0)
            y = y.transpose(1, 2).reshape(B, T, C)
            return self.resid_dropout(self.c_proj(y)), {}
        if state is not None:
            k = torch.cat([state["k"].to(k.dtype), k], 2)
            v = torch.cat([state["v"].to(v.dtype), v], 2)
        p = self.attn_dropout_p if self.training else 0.0
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # query i sits at cache index past + i and sees keys j <= past + i; written with aranges of the
            # tensors' own lengths so that exported graphs keep both lengths dynamic, and in an explicit form: the
            # exporter's SDPA lowering builds an fp32 mask that breaks fp16 graphs
            offset = torch._shape_as_tensor(k)[2] - torch._shape_as_tensor(q)[2]
            kpos = torch.arange(k.shape[2], device=x.device)
            qpos = torch.arange(q.shape[2], device=x.device) + offset.to(x.device)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            y = att.masked_fill(~(kpos[None, :] <= qpos[:, None]), float("-inf")).softmax(-1) @ v
        elif k.shape[2] == q.shape[2]:   # no cache: the causal flag lets SDPA take its flash kernels (no mask)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            past = k.shape[2] - q.shape[2]
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= \
                torch.arange(past, past + q.shape[2], device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)), {"k": k.float(), "v": v.float()}


class Block(nn.Module):
    def __init__(self, config: LMConfig, attn_cls):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = attn_cls(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)
        eta = 1e-5  # the official layer-scale init
        self.gamma1 = nn.Parameter(eta * torch.ones(config.n_embd))
        self.gamma2 = nn.Parameter(eta * torch.ones(config.n_embd))

    def forward(self, x, state: Optional[State] = None, pos=0, packed: Optional[Packed] = None):
        a, state = self.attn(self.ln_1(x), state, pos, packed)
        x = x + self.gamma1 * a
        x = x + self.gamma2 * self.mlp(self.ln_2(x))
        return x, state


class CausalLM(Checkpointed, nn.Module):
    """nanoGPT trunk shared by the causal LMs; subclasses pick the attention. set_checkpointing(True) recomputes
    each block's activations in the backward pass (checkpointing.py)."""
    attn_cls = CausalTSSAAttention
    family = "tost"
    kind = "lm"
    step_input_rank = 1  # token ids [B]
    packed_input = ("idx", "[1, total]")     # its name and layout with cu_seqlens

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        modules = self._input_modules(config)
        if not config.unbounded:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(drop=nn.Dropout(config.dropout),
                       h=nn.ModuleList([Block(config, self.attn_cls) for _ in range(config.n_layer)]),
                       ln_f=LayerNorm(config.n_embd, bias=config.bias))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if "wte" in self.transformer:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _input_modules(self, config: LMConfig) -> dict:
        return dict(wte=nn.Embedding(config.vocab_size, config.n_embd))

    def _check_input(self, idx: torch.Tensor) -> None:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx: expected int64 token ids of shape [B, T], got {idx.dtype} shape {tuple(idx.shape)}")

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(idx)                                       # [B, T, C]

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # -- backends -----------------------------------------------------------------------------------
    def set_backend(self, backend: str) -> "CausalLM":
        """'torch' (reference) or 'triton' (fused kernels) for the attention cores."""
        from ..ops import BACKENDS
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        for block in self.transformer.h:
            block.attn.backend = backend
        return self

    # -- state --------------------------------------------------------------------------------------
    def state_spec(self, batch: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every state tensor, in a fixed order (ONNX/engine I/O follows it)."""
        spec = {"pos": ((batch,), torch.int64)}
        for i, block in enumerate(self.transformer.h):
            for q, shape in block.attn.state_shapes(batch).items():
                spec[f"{i}.{q}"] = (shape, torch.float32)
        return spec

    def init_state(self, batch_size: int, device=None) -> State:
        device = device or self.lm_head.weight.device
        return {n: torch.zeros(s, dtype=dt, device=device) for n, (s, dt) in self.state_spec(batch_size).items()}

    def _check_state(self, state: State, batch: int) -> None:
        spec = self.state_spec(batch)
        missing = [n for n in spec if n not in state]
        unexpected = [n for n in state if n not in spec]
        if missing or unexpected:
            raise ValueError(f"state: expected tensors {list(spec)}, missing {missing}, unexpected {unexpected}")
        for n, (shape, dt) in spec.items():
            t = state[n]
            if self.attn_cls is CausalSoftmaxAttention and n.endswith((".k", ".v")):
                ok = t.dim() == 4 and t.shape[:2] == shape[:2] and t.shape[3] == shape[3]
            else:
                ok = tuple(t.shape) == shape
            if not ok or t.dtype != dt:
                raise ValueError(f"state[{n!r}]: expected {dt} shape {shape}, got {t.dtype} shape {tuple(t.shape)}")

    # -- forward ------------------------------------------------------------------------------------
    def _trunk(self, idx: torch.Tensor, state: Optional[State], packed: Optional[Packed] = None):
        self._check_input(idx)
        B, T = idx.shape[:2]
        if packed is not None:
            return self._packed_trunk(idx, packed)
        # without a state every sequence starts at 0: an int, so that neither the range check here nor the attention
        # ops read positions back from the device (on a GPU, a wait for every queued kernel, once a layer)
        pos = 0 if state is None else state["pos"]
        if state is not None:
            self._check_state(state, B)
        if not self.config.unbounded and B and not tracing():
            end = T if state is None else int(pos.max()) + T
            if end > self.config.block_size:
                raise ValueError(
                    f"position: a sequence would reach position {end}, beyond block_size={self.config.block_size} "
                    "(the end of the model's position tables); use a model with unbounded=True for endless streams")
        x = self._embed(idx)
        if not self.config.unbounded:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device) if state is None else
                                         pos[:, None] + torch.arange(T, device=idx.device))
        x = self.transformer.drop(x)
        new_state = {} if state is None else {"pos": pos + T}   # (without a state, model(idx) keeps only the logits)
        for i, block in enumerate(self.transformer.h):
            layer_state = None if state is None else {q: state[f"{i}.{q}"] for q in block.attn.state_quantities}
            x, st = self._block(block, x, layer_state, pos)
            new_state.update({f"{i}.{q}": t for q, t in st.items()})
        return self.lm_head(self.transformer.ln_f(x)), new_state

    def _packed_trunk(self, idx: torch.Tensor, packed: Packed):
        on_host = not isinstance(packed.cu, torch.Tensor)
        longest = max(b - a for a, b in zip(packed.cu, packed.cu[1:])) if on_host else packed.max_seqlen
        if not self.config.unbounded and longest is not None and longest > self.config.block_size:
            what = "a document of" if on_host else "max_seqlen"
            raise ValueError(f"cu_seqlens: {what} {longest} tokens, longer than block_size={self.config.block_size} "
                             "(the model's position tables)")
        if not on_host and longest is None and not self.config.unbounded:
            packed = packed._replace(max_seqlen=self.config.block_size)    # (no document is longer)
        x = self._embed(idx)                                                     # [1, total, C]
        cu = torch.as_tensor(packed.cu).to(x.device)
        doc, at = sequence_positions(cu, x.shape[1])                             # [total] each
        packed = packed._replace(doc=doc)
        if not self.config.unbounded:                  # each document's positions from 0
            if not on_host:                            # (offsets on the device: checked there, without a wait)
                torch._assert_async((at < self.config.block_size).all(), "cu_seqlens: a document longer than "
                                    f"block_size={self.config.block_size} (the model's position tables)")
            x = x + self.transformer.wpe(at)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x, _ = self._block(block, x, None, 0, packed)
        return self.lm_head(self.transformer.ln_f(x)), {}

    def forward(self, idx: torch.Tensor, cu_seqlens=None, max_seqlen: Optional[int] = None) -> torch.Tensor:
        """idx: [B, T] int64 -> logits [B, T, V] at every position.

        Packed documents: idx [1, total] holds N documents end to end, document b its tokens cu_seqlens[b] to
        cu_seqlens[b + 1] (cu_seqlens: [N + 1] ints or a 1-D integer tensor, 0 first, total last); each runs from
        position 0 and attends within itself only, as if alone, so documents of mixed lengths train without padding.
        Its last token's logits predict nothing of the next document: leave its target out of the loss (e.g. -100
        with cross_entropy's ignore_index). Offsets are read on the host (a tensor once a call), except under
        torch.compile, where a tensor's values stay on the device (other offsets reuse the compiled graph; their
        values are then not checked) and max_seqlen bounds the documents' lengths (default: block_size; a model
        with unbounded=True needs it for causal ToST)."""
        if cu_seqlens is None:
            return self._trunk(idx, None)[0]
        self._check_input(idx)
        return self._trunk(idx, None, Packed(packed_offsets(idx, cu_seqlens, *self.packed_input), max_seqlen))[0]

    def prefill(self, idx: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        """idx: [B, T] -> (logits [B, T, V], state after the block)."""
        if state is None:
            state = self.init_state(idx.shape[0], idx.device)
        return self._trunk(idx, state)

    def step(self, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """idx: [B] -> (logits [B, V], state after the token)."""
        if idx.dim() != self.step_input_rank:
            raise ValueError(f"idx: expected one input per sequence, rank {self.step_input_rank}, "
                             f"got shape {tuple(idx.shape)}")
        logits, state = self._trunk(idx[:, None], state)
        return logits[:, 0], state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ToSTLM(CausalLM):
    """Causal ToST language model (official nanoGPT-style `GPT` with TSSA=True)."""
    attn_cls = CausalTSSAAttention
    family = "tost"


class LinearAttentionLM(CausalLM):
    """Causal linear-attention LM (elu+1 features) on the ToST trunk."""
    attn_cls = CausalLinearAttention
    family = "linear"


class GPTLM(CausalLM):
    """Softmax GPT-2 baseline on the same trunk, with a KV cache as its recurrent state."""
    attn_cls = CausalSoftmaxAttention
    family = "softmax"
