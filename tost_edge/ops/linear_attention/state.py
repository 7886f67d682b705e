"""State of causal linear attention and the checks shared by its forms."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..._checks import as_state, check_float, check_rank, fail


class LinearAttentionState(NamedTuple):
    """kv: [B, H, D, M] = sum_j phi(k_j) v_j^T;  k_sum: [B, H, D] = sum_j phi(k_j). fp32."""
    kv: torch.Tensor
    k_sum: torch.Tensor

    @staticmethod
    def zeros(batch: int, num_heads: int, head_dim: int, value_dim: int, device=None,
              dtype=torch.float32) -> "LinearAttentionState":
        n = batch * num_heads * head_dim
        kv, k_sum = torch.zeros(n * value_dim + n, device=device, dtype=dtype).split([n * value_dim, n])  # one fill
        return LinearAttentionState(kv.view(batch, num_heads, head_dim, value_dim), k_sum.view(batch, num_heads,
                                                                                                  head_dim))


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 (Katharopoulos et al. 2020): positive, so the normaliser never vanishes."""
    return F.elu(x) + 1.0


def prepare(q, k, v, state: Optional[LinearAttentionState], batch: Optional[int] = None):
    """Checks q, k, v and the state (whose batch is `batch`, or q's: packed sequences have one state a sequence);
    returns B, T, H, D, M, the state's dtype and the state in it (zeros where None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(name, t, 4, "[B, T, H, D]")
        check_float(name, t)
    if k.shape != q.shape:
        fail("k", f"the shape of q {tuple(q.shape)}", f"shape {tuple(k.shape)}")
    B, T, H, D = q.shape
    NB = B if batch is None else batch
    if v.shape[:3] != (B, T, H):
        fail("v", f"shape ({B}, {T}, {H}, M)", f"shape {tuple(v.shape)}")
    M = v.shape[3]
    sdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    if state is None:
        state = LinearAttentionState.zeros(NB, H, D, M, device=q.device, dtype=sdt)
    else:
        state = as_state(LinearAttentionState, state)
        for name, t, shape in (("state.kv", state.kv, (NB, H, D, M)), ("state.k_sum", state.k_sum, (NB, H, D))):
            if tuple(t.shape) != shape:
                fail(name, f"shape {shape}", f"shape {tuple(t.shape)}")
            if t.dtype not in (torch.float32, torch.float64):
                fail(name, "float32 (recurrent state is always fp32)", t.dtype)
        state = LinearAttentionState(state.kv.to(sdt), state.k_sum.to(sdt))
    return B, T, H, D, M, sdt, state


def unpack_qkv(qkv: torch.Tensor):
    """q, k, v: views of qkv [B, T, 3, H, D] (a model's one projection), [B, T, H, D] each."""
    check_rank("qkv", qkv, 5, "[B, T, 3, H, D]")
    if qkv.shape[2] != 3:
        fail("qkv.shape[2]", "3 (q, k, v)", qkv.shape[2])
    return qkv.unbind(2)
