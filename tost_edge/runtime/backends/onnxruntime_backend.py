"""onnxruntime backend: CPU by default, CUDA / TensorRT execution providers when installed."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(double)": np.float64}


def default_providers() -> List[str]:
    import onnxruntime as ort
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle, providers: Optional[List[str]] = None):
        import onnxruntime as ort
        if bundle.manifest["flavor"] != "portable":
            raise ValueError(f"bundle {bundle.path}: onnxruntime runs portable bundles; this one is "
                             f"{bundle.manifest['flavor']!r} (build a TensorRT engine from it, or export "
                             "with --flavor portable)")
        self.providers = providers or default_providers()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {g: ort.InferenceSession(str(bundle.graph_file(g)), opts, providers=self.providers)
                         for g in ("prefill", "step")}
        self.input_types = {g: {i.name: _ORT_TYPES[i.type] for i in s.get_inputs()} for g, s in self.sessions.items()}
        self.output_names = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}

    def run(self, graph: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        types = self.input_types[graph]
        feeds = {k: np.ascontiguousarray(v, dtype=types[k]) for k, v in feeds.items()}
        return dict(zip(self.output_names[graph], self.sessions[graph].run(None, feeds)))
