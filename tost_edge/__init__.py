"""tost-edge: Token Statistics Transformers (ToST) and linear attention from PyTorch to edge GPUs.

The runtime (`tost_edge.runtime`) needs only numpy and onnxruntime; the ops, models and export
need PyTorch (`pip install tost-edge[torch]`).
"""
__version__ = "0.1.0"
