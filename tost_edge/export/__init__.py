"""Export: ONNX graphs (full / prefill / step / stream bundles; portable / plugin flavours), their checks, and
TensorRT engine builds.

    from tost_edge.export import export_onnx
    export_onnx(model, "bundle/", graph="stream", flavor="portable", dtype="fp32")
"""
from .onnx_export import ExportReport, export_onnx, manifest
from .plugin_nodes import CAUSAL_LINEAR_ATTENTION, CAUSAL_TSSA, PLUGIN_OPS, TSSA, register_schemas

__all__ = ["export_onnx", "ExportReport", "manifest", "register_schemas", "PLUGIN_OPS", "TSSA", "CAUSAL_TSSA",
           "CAUSAL_LINEAR_ATTENTION"]
