"""numpy implementations of the plugin nodes for onnx.reference.ReferenceEvaluator (fp32 accumulation).

They re-derive the op spec (tost_edge/ops/*/naive.py) without torch, so a plugin-flavour graph can be
checked anywhere onnx is installed.
"""
from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from .plugin_nodes import CAUSAL_LINEAR_ATTENTION, CAUSAL_TSSA, DOMAIN, TSSA


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def tssa_np(w, temp, num_heads):
    B, N, C = w.shape
    H, D = num_heads, C // num_heads
    x = w.astype(np.float32).reshape(B, N, H, D)
    norm = np.maximum(np.sqrt((x * x).sum(1, keepdims=True)), 1e-12)
    energy = ((x / norm) ** 2).sum(-1)                                        # [B, N, H]
    pi = _softmax(energy * temp.reshape(1, 1, H), -1)
    pi_norm = pi / (pi.sum(1, keepdims=True) + 1e-8)
    dots = np.einsum("bnh,bnhd->bhd", pi_norm, x * x)
    y = -x * pi[..., None] / (1.0 + dots[:, None])
    return y.reshape(B, N, C).astype(w.dtype)


def causal_tssa_np(w, temp, bias, pos, s_wsq, s_pi_wsq, s_pi, num_heads, bounded):
    B, T, C = w.shape
    H, D = num_heads, C // num_heads
    x = w.astype(np.float32).reshape(B, T, H, D)
    s_wsq, s_pi_wsq, s_pi = s_wsq.copy(), s_pi_wsq.copy(), s_pi.copy()
    y = np.empty_like(x)
    for t in range(T):
        wsq = x[:, t] ** 2                                                    # [B, H, D]
        s_wsq = s_wsq + wsq
        b = bias[:, pos + t].T if bounded else np.zeros((B, H), np.float32)  # [B, H]
        energy = (wsq / np.maximum(s_wsq, 1e-12)).sum(-1) + D * b
        pi = _softmax(energy * temp.reshape(1, H), -1)
        s_pi_wsq = s_pi_wsq + pi[..., None] * wsq
        s_pi = s_pi + pi
        y[:, t] = -x[:, t] * pi[..., None] / (1.0 + s_pi_wsq / (s_pi + 1e-8)[..., None])
    return y.reshape(B, T, C).astype(w.dtype), s_wsq, s_pi_wsq, s_pi


def causal_linear_attention_np(q, k, v, kv, k_sum, eps):
    phi = lambda a: np.where(a > 0, a + 1.0, np.exp(np.minimum(a, 0)))     # noqa: E731  elu(a) + 1
    fq, fk, vv = phi(q.astype(np.float32)), phi(k.astype(np.float32)), v.astype(np.float32)
    kv, k_sum = kv.copy(), k_sum.copy()
    y = np.empty(v.shape, np.float32)
    for t in range(q.shape[1]):
        kv = kv + fk[:, t, :, :, None] * vv[:, t, :, None, :]
        k_sum = k_sum + fk[:, t]
        num = np.einsum("bhd,bhdm->bhm", fq[:, t], kv)
        den = (fq[:, t] * k_sum).sum(-1, keepdims=True)
        y[:, t] = num / (den + eps)
    return y.astype(v.dtype), kv, k_sum


class TSSA_TRT(OpRun):
    op_domain = DOMAIN

    def _run(self, w, temp, num_heads=None, plugin_version=None, plugin_namespace=None):
        return (tssa_np(w, temp, num_heads),)


class CausalTSSA_TRT(OpRun):
    op_domain = DOMAIN

    def _run(self, w, temp, bias, pos, s1, s2, s3, num_heads=None, bounded=None, plugin_version=None,
             plugin_namespace=None):
        return causal_tssa_np(w, temp, bias, pos.astype(np.int64), s1, s2, s3, num_heads, bounded)


class CausalLinearAttention_TRT(OpRun):
    op_domain = DOMAIN

    def _run(self, q, k, v, kv, k_sum, eps=None, plugin_version=None, plugin_namespace=None):
        return causal_linear_attention_np(q, k, v, kv, k_sum, eps)


REFERENCE_OPS = [TSSA_TRT, CausalTSSA_TRT, CausalLinearAttention_TRT]
assert [c.__name__ for c in REFERENCE_OPS] == [TSSA, CAUSAL_TSSA, CAUSAL_LINEAR_ATTENTION]
