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


def as_state(cls, state):
    """state as cls (a NamedTuple of tensors): an instance, or a tuple or list of as many tensors as it has fields.
    A bare tensor (which unpacks along its first axis) or a sequence of another length is an error naming the
    fields, rather than a complaint about a field's shape or a missing positional argument."""
    import torch
    if isinstance(state, cls):
        return state
    fields = ", ".join(cls._fields)
    if isinstance(state, torch.Tensor):
        actual = f"a tensor of shape {tuple(state.shape)}"
    elif not isinstance(state, (tuple, list)):
        actual = type(state).__name__
    elif len(state) != len(cls._fields):
        actual = f"a {type(state).__name__} of {len(state)}"
    elif not all(isinstance(t, torch.Tensor) for t in state):
        actual = f"a {type(state).__name__} of " + ", ".join(type(t).__name__ for t in state)
    else:
        return cls(*state)
    fail("state", f"a {cls.__name__} or a tuple of {len(cls._fields)} tensors ({fields})", actual)


def tracing() -> bool:
    """True while torch traces or exports: value checks that read tensor data are skipped then."""
    import torch
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or (hasattr(torch, "compiler") and torch.compiler.is_compiling()))
