"""The streaming runtime: stream bundles on onnxruntime (default) or TensorRT, without PyTorch.

    from tost_edge.runtime import Session
    session = Session("bundle/")
    stream = session.open_stream()
    for tok in stream.generate([1, 2, 3], max_new_tokens=16, temperature=0):
        print(tok)
"""
from .bundle import Bundle
from .scheduler import Request, Scheduler
from .session import PositionRangeError, Session, Stream
from .snapshot import SnapshotError
from .stats import StreamStats

__all__ = ["Session", "Stream", "Scheduler", "Request", "Bundle", "SnapshotError", "PositionRangeError",
           "StreamStats"]
