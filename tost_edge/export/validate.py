"""Checks of exported graphs: onnx.checker, shape inference, and numeric parity with the PyTorch model."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, NamedTuple

import numpy as np


class Parity(NamedTuple):
    graph: str
    tensor: str
    max_abs: float
    rel: float       # max |a - b| / max |b|
    ok: bool


def check_model(path: Path) -> None:
    """onnx.checker (full check, which runs shape inference) on a file, external data included."""
    import onnx
    from .plugin_nodes import register_schemas
    register_schemas()
    onnx.checker.check_model(str(path), full_check=True)


def session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def reference_evaluator(path: Path):
    import onnx
    from onnx.reference import ReferenceEvaluator
    from .reference_ops import REFERENCE_OPS
    return ReferenceEvaluator(onnx.load(str(path)), new_ops=REFERENCE_OPS)


def run(path: Path, feeds: Dict[str, np.ndarray], flavor: str) -> Dict[str, np.ndarray]:
    if flavor == "plugin" and has_custom_nodes(path):
        ev = reference_evaluator(path)
        names = [o.name for o in ev.proto_.graph.output]
        return dict(zip(names, ev.run(None, feeds)))
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def has_custom_nodes(path: Path) -> bool:
    import onnx
    from .plugin_nodes import PLUGIN_OPS
    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in PLUGIN_OPS for n in m.graph.node)


def compare(graph: str, got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], tol: float) -> List[Parity]:
    rows = []
    for name, ref in want.items():
        a, b = np.asarray(got[name], np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            rows.append(Parity(graph, name, float("inf"), float("inf"), False))
            continue
        err = float(np.abs(a - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        rel = err / scale if scale > 0 else err
        rows.append(Parity(graph, name, err, rel, bool(np.isfinite(a).all() and rel <= tol)))
    return rows
