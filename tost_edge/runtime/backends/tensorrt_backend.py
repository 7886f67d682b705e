"""TensorRT backend: runs the engines that `tost-edge build` made from a stream bundle.

Device memory through cupy, every copy and launch on one CUDA stream. Each call copies the feeds (tokens, pos,
state) to the device and the outputs back, so streams keep their state as host numpy arrays like every other
backend. Where the state does not grow (ToST, linear attention: every step has the same shapes), the step engine
runs from a CUDA graph, one per batch size, captured on first use with its own execution context and device
buffers: a step is then the feeds' copies, one graph launch and the outputs' copies, without TensorRT's enqueue.
A KV cache changes the step's shapes every call, so the softmax baselines enqueue each step.
"""
from __future__ import annotations

import json
import warnings
from typing import Dict

import numpy as np


def _require():
    try:
        import cupy  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"backend='tensorrt' needs the tensorrt Python package (JetPack / TensorRT) and cupy: {e}")


class _Engine:
    def __init__(self, runtime, path):
        import tensorrt as trt
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize this engine (built by another TensorRT "
                               "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.ranges = {n: self._range(n) for n in self.inputs}   # checked before each call

    def _range(self, name):
        """(min, max) of an input's shape: its optimisation profile's, or its fixed shape."""
        shape = tuple(self.engine.get_tensor_shape(name))
        if -1 not in shape:
            return shape, shape
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(lo), tuple(hi)


def check_profile(graph: str, name: str, shape, lo, hi) -> None:
    """An input shape outside the engine's optimisation profile, as a clear error (TensorRT only returns False)."""
    if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
        raise ValueError(f"{graph} engine: input {name} has shape {tuple(shape)}, outside the engine's profile "
                         f"{tuple(lo)} .. {tuple(hi)}; rebuild the engines with a larger range (`tost-edge build "
                         "--max-batch N`) or feed less at once")


def _bind(context, eng: _Engine, graph: str, inputs: Dict) -> Dict:
    """Point a context at device input buffers; returns output buffers it writes, allocated at their shapes."""
    import cupy as cp
    for name, buf in inputs.items():
        if not context.set_input_shape(name, buf.shape):
            raise RuntimeError(f"{graph} engine: TensorRT refused shape {buf.shape} for input {name}")
        context.set_tensor_address(name, buf.data.ptr)
    outputs = {n: cp.empty(tuple(context.get_tensor_shape(n)), dtype=eng.dtypes[n]) for n in eng.outputs}
    for name, buf in outputs.items():
        context.set_tensor_address(name, buf.data.ptr)
    return outputs


def _execute(context, graph: str, stream) -> None:
    if not context.execute_async_v3(stream.ptr):
        raise RuntimeError(f"TensorRT {graph} engine failed to run")


class _StepGraph:
    """The step engine at one set of input shapes, replayed from a CUDA graph: its own execution context (the graph
    holds the context's memory) and device buffers at fixed addresses, which each call fills and reads."""

    def __init__(self, eng: _Engine, feeds: Dict[str, np.ndarray], stream):
        import cupy as cp
        self.context = eng.engine.create_execution_context()
        self.inputs = {n: cp.empty(np.shape(feeds[n]), dtype=eng.dtypes[n]) for n in eng.inputs}
        self.outputs = _bind(self.context, eng, "step", self.inputs)
        self.stream = stream
        self._fill(feeds)               # (the engine must not see the fresh buffers' garbage: token ids index tables)
        _execute(self.context, "step", stream)      # once outside the capture: TensorRT's deferred set-up
        stream.begin_capture()
        try:
            _execute(self.context, "step", stream)
        finally:
            self.graph = stream.end_capture()

    def _fill(self, feeds: Dict[str, np.ndarray]):
        for name, buf in self.inputs.items():
            buf.set(np.ascontiguousarray(feeds[name], dtype=buf.dtype), stream=self.stream)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self._fill(feeds)
        self.graph.launch(stream=self.stream)
        out = {name: buf.get(stream=self.stream) for name, buf in self.outputs.items()}
        self.stream.synchronize()
        return out


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, bundle, cuda_graphs: bool = True):
        _require()
        import cupy as cp
        import tensorrt as trt

        from ..engine_meta import check_engine_metadata
        meta_path = bundle.path / "engine.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"bundle {bundle.path}: no engines; build them on this device with "
                                    f"`tost-edge build {bundle.path}`")
        meta = json.loads(meta_path.read_text())
        check_engine_metadata(meta)
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        if meta.get("plugin_library"):   # engines of a portable bundle need none
            trt.get_plugin_registry().load_library(meta["plugin_library"])
        self.engines = {g: _Engine(self.runtime, bundle.path / meta["engines"][g]) for g in ("prefill", "step")}
        self.stream = cp.cuda.Stream(non_blocking=True)
        # Session.step_batch / prefill_batch split their streams into calls of at most this many
        self.max_batch = int(meta.get("profile", {}).get("max_batch") or 0) or None
        self.cuda_graphs = bool(cuda_graphs) and not bundle.grows
        self.step_graphs: Dict[tuple, _StepGraph] = {}      # by the step's input shapes (its batch size)

    def run(self, graph: str, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import cupy as cp
        eng = self.engines[graph]
        for name in eng.inputs:
            check_profile(graph, name, np.shape(feeds[name]), *eng.ranges[name])
        if graph == "step" and self.cuda_graphs:
            key = tuple(np.shape(feeds[n]) for n in eng.inputs)
            if key not in self.step_graphs:
                try:
                    self.step_graphs[key] = _StepGraph(eng, feeds, self.stream)
                except RuntimeError as e:     # (cupy's CUDA errors are RuntimeErrors too)
                    warnings.warn(f"TensorRT step engine: capturing it into a CUDA graph failed ({e}); every step "
                                  "is enqueued instead", RuntimeWarning, stacklevel=2)
                    self.cuda_graphs, self.step_graphs = False, {}
            if self.cuda_graphs:
                return self.step_graphs[key].run(feeds)
        with self.stream:   # the copies on the stream that runs the engine, so they are ordered before it
            inputs = {n: cp.asarray(np.ascontiguousarray(feeds[n], dtype=eng.dtypes[n])) for n in eng.inputs}
            outputs = _bind(eng.context, eng, graph, inputs)
            _execute(eng.context, graph, self.stream)
            self.stream.synchronize()
            return {k: cp.asnumpy(v) for k, v in outputs.items()}
