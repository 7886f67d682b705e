"""Reference TSSA (bidirectional): the core of the official ToST `AttentionTSSA`.

This is the spec every other implementation (Triton, CUDA, ONNX) is checked against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_divisible, check_float, check_rank, fail

PI_EPS = 1e-8     # added to sum_n Pi before dividing
NORM_EPS = 1e-12  # F.normalize's eps over the token axis


def check_temp(temp: torch.Tensor, num_heads: int) -> torch.Tensor:
    """temp: [H] or the official [H, 1] -> [H]."""
    if temp.dim() == 2 and temp.shape[1] == 1:
        temp = temp.squeeze(1)   # a view both ways: indexing's backward would zero-fill and copy (two kernels)
    if temp.dim() != 1 or temp.shape[0] != num_heads:
        fail("temp", f"shape ({num_heads},) or ({num_heads}, 1)", f"shape {tuple(temp.shape)}")
    check_float("temp", temp)
    return temp


def check_w(w: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    check_rank("w", w, 3, "[B, N, C]")
    check_float("w", w)
    B, N, C = w.shape
    check_divisible("w.shape[-1] (C)", C, num_heads)
    if N == 0:
        fail("w.shape[1] (N)", "at least one token", 0)
    return B, N, num_heads, C // num_heads


def naive_tssa(w: torch.Tensor, temp: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Token Statistics Self-Attention, evaluated in fp32 (fp64 stays fp64).

    Args:
        w:    [B, N, C], C = H * D in head-major layout ('b n (h d)').
        temp: [H] or [H, 1], per-head temperature of the softmax over heads.
        num_heads: H.
    Returns:
        y: [B, N, C] in w's dtype, y = -w * Pi / (1 + dots).
    """
    B, N, H, D = check_w(w, num_heads)
    temp = check_temp(temp, num_heads)
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    x = w.to(cdt).view(B, N, H, D)                                # [B, N, H, D]
    x_normed = F.normalize(x, dim=1, eps=NORM_EPS)                # unit norm over tokens
    energy = x_normed.square().sum(-1)                            # [B, N, H]
    pi = torch.softmax(energy * temp.to(cdt), dim=-1)             # softmax over heads
    pi_norm = pi / (pi.sum(1, keepdim=True) + PI_EPS)             # [B, N, H]
    dots = torch.einsum("bnh,bnhd->bhd", pi_norm, x.square())     # [B, H, D]
    y = -x * pi.unsqueeze(-1) / (1.0 + dots.unsqueeze(1))         # [B, N, H, D]
    return y.reshape(B, N, H * D).to(w.dtype)
