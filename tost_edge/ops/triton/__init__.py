"""Triton kernels for the ops (forward and backward), selected with backend="triton".

Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; anything else is a clear error.

Launch settings are module attributes, tuned with `benchmarks/sweep.py` on an H200: `tssa.PROGRAMS`, `SAVE_PI`,
`L2_GROUP`, `RESIDENT` (tile size and warps are autotuned per pass); `causal_tssa.PROGRAMS`, `UNROLL`, `WARPS`,
`BWD_WARPS`, `SAVE_PI`, `L2_GROUP`, `TILED`; `linear_attention.CHUNK`, `WARPS`, `SPLIT`. docs/training.md lists them
all; `settings` reads and sets them checked (a sweep.json of another card, TOST_EDGE_TRITON_SETTINGS).
`benchmarks/compile_report.py` shows what the compiler makes of each kernel without a GPU.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
    _IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - exercised where Triton is absent
    _IMPORT_ERROR = e

if _IMPORT_ERROR is None:
    from .causal_tssa import triton_causal_tssa, triton_causal_tssa_packed
    from .linear_attention import (triton_causal_linear_attention, triton_causal_linear_attention_packed,
                                   triton_causal_linear_attention_qkvpacked)
    from .tssa import triton_tssa, triton_tssa_packed
    from . import settings
    settings.apply_environment()
else:
    def _unavailable(*_a, **_k):
        raise RuntimeError("backend='triton': Triton is not installed (pip install tost-edge[triton])")

    triton_tssa = triton_tssa_packed = triton_causal_tssa = triton_causal_tssa_packed = _unavailable
    triton_causal_linear_attention = triton_causal_linear_attention_qkvpacked = _unavailable
    triton_causal_linear_attention_packed = _unavailable

__all__ = ["triton_tssa", "triton_tssa_packed", "triton_causal_tssa", "triton_causal_tssa_packed",
           "triton_causal_linear_attention", "triton_causal_linear_attention_qkvpacked",
           "triton_causal_linear_attention_packed"]
