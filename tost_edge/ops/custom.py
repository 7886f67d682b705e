"""The ops as torch.library custom ops (`tost_edge::tssa`, `tost_edge::causal_tssa`,
`tost_edge::causal_linear_attention`): each stays one node through tracing, so the ONNX exporter can emit a
single plugin node for it (see tost_edge.export.plugin_nodes). Eager calls run the fp32 reference.

These take the layouts the TensorRT plugins take: temp [H] and denom_bias [H, Tmax] in fp32, pos [B] int64.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .causal_tssa import CausalTSSAState, naive_causal_tssa
from .linear_attention import LinearAttentionState, naive_causal_linear_attention
from .tssa import naive_tssa


@torch.library.custom_op("tost_edge::tssa", mutates_args=())
def tssa_op(w: Tensor, temp: Tensor, num_heads: int) -> Tensor:
    return naive_tssa(w, temp, num_heads)


@tssa_op.register_fake
def _(w, temp, num_heads):
    return torch.empty_like(w)


@torch.library.custom_op("tost_edge::causal_tssa", mutates_args=())
def causal_tssa_op(w: Tensor, temp: Tensor, denom_bias: Tensor, pos: Tensor, sum_wsq: Tensor, sum_pi_wsq: Tensor,
                   sum_pi: Tensor, num_heads: int, bounded: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    y, s = naive_causal_tssa(w, temp, denom_bias if bounded else None, num_heads,
                             CausalTSSAState(sum_wsq, sum_pi_wsq, sum_pi), pos)
    return y, s.sum_wsq.clone(), s.sum_pi_wsq.clone(), s.sum_pi.clone()


@causal_tssa_op.register_fake
def _(w, temp, denom_bias, pos, sum_wsq, sum_pi_wsq, sum_pi, num_heads, bounded):
    return torch.empty_like(w), torch.empty_like(sum_wsq), torch.empty_like(sum_pi_wsq), torch.empty_like(sum_pi)


@torch.library.custom_op("tost_edge::causal_linear_attention", mutates_args=())
def causal_linear_attention_op(q: Tensor, k: Tensor, v: Tensor, kv: Tensor, k_sum: Tensor,
                               eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    y, s = naive_causal_linear_attention(q, k, v, LinearAttentionState(kv, k_sum), eps)
    return y, s.kv.clone(), s.k_sum.clone()


@causal_linear_attention_op.register_fake
def _(q, k, v, kv, k_sum, eps):
    return torch.empty_like(v), torch.empty_like(kv), torch.empty_like(k_sum)


def plugin_tssa(w, temp, num_heads):
    return tssa_op(w, temp.reshape(-1).float(), num_heads)


def plugin_causal_tssa(w, temp, denom_bias, num_heads, state, pos0):
    B, H, D = w.shape[0], num_heads, w.shape[-1] // num_heads
    if state is None:
        state = CausalTSSAState.zeros(B, H, D, device=w.device)
    if not isinstance(pos0, torch.Tensor):
        pos0 = torch.full((B,), int(pos0), dtype=torch.long, device=w.device)
    bounded = denom_bias is not None
    bias = denom_bias.reshape(H, -1).float() if bounded else torch.zeros(H, 1, device=w.device)
    y, *s = causal_tssa_op(w, temp.reshape(-1).float(), bias, pos0, *state, num_heads, bounded)
    return y, CausalTSSAState(*s)


def plugin_causal_linear_attention(q, k, v, state, eps):
    B, T, H, D = q.shape
    if state is None:
        state = LinearAttentionState(q.new_zeros(B, H, D, v.shape[-1], dtype=torch.float32),
                                     q.new_zeros(B, H, D, dtype=torch.float32))
    y, kv, k_sum = causal_linear_attention_op(q, k, v, *state, eps)
    return y, LinearAttentionState(kv, k_sum)
