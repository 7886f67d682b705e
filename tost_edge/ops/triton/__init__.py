"""Triton kernels for the ops (forward and backward)."""
from __future__ import annotations


def _unavailable(*_a, **_k):
    raise RuntimeError(
        "backend='triton' needs Triton and a CUDA GPU, or TRITON_INTERPRET=1 to run the kernels on the CPU; "
        "install with `pip install tost-edge[triton]`")


triton_tssa = triton_causal_tssa = triton_causal_linear_attention = _unavailable
