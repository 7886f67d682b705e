"""Argument checks that raise ValueError naming the argument, the expected and the actual value."""
from __future__ import annotations

from typing import Sequence


def fail(name: str, expected: str, actual) -> None:
    raise ValueError(f"{name}: expected {expected}, got {actual}")


def check_rank(name: str, t, rank: int, layout: str) -> None:
    if t.dim() != rank:
        fail(name, f"a {rank}-D tensor {layout}", f"shape {tuple(t.shape)}")


def check_float(name: str, t) -> None:
    if not t.dtype.is_floating_point:
        fail(name, "a floating-point tensor (float32, float16, bfloat16 or float64)", f"dtype {t.dtype}")


def check_shape(name: str, t, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        fail(name, f"shape {tuple(shape)}", f"shape {tuple(t.shape)}")


def check_divisible(name: str, c: int, num_heads: int) -> None:
    if num_heads <= 0 or c % num_heads:
        fail(name, f"a channel count divisible by num_heads={num_heads}", c)


def tracing() -> bool:
    """True while torch traces or exports: value checks that read tensor data are skipped then."""
    import torch
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or (hasattr(torch, "compiler") and torch.compiler.is_compiling()))
