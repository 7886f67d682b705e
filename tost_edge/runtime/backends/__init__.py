"""Execution backends behind one small interface: run(graph, feeds) -> outputs."""
from __future__ import annotations

from typing import Dict, Protocol

import numpy as np

BACKENDS = ("onnxruntime", "tensorrt")


class Backend(Protocol):
    name: str

    def run(self, graph: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """graph: "prefill" | "step"; feeds and outputs by I/O name (numpy, host memory)."""


def make_backend(bundle, backend: str = "onnxruntime", providers=None, cuda_graphs: bool = True) -> Backend:
    """providers: onnxruntime's execution providers (default: CUDA when installed, then CPU); cuda_graphs:
    TensorRT replays fixed-shape steps from CUDA graphs."""
    if backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(bundle, providers)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend(bundle, cuda_graphs)
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
