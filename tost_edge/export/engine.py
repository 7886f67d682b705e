"""TensorRT engine build from plugin-flavour ONNX (TensorRT 10.x Python API), and the engine metadata check.

    build_engine("bundle/step.onnx", "bundle/step.engine", plugin_library="build/libtost_edge_plugins.so")
    build_bundle_engines("bundle/", plugin_library=...)     # prefill.engine + step.engine + engine.json

fp16 ONNX exports are built as strongly typed networks, so every tensor keeps the type the export gave it
(activations fp16, statistics and state fp32). fp32 exports built with fp16=True use the FP16 builder flag;
the plugins pin their state tensors to fp32 either way.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from ..runtime.engine_meta import check_engine_metadata, file_sha256  # noqa: F401  (re-exported)
from ..runtime.engine_meta import current_gpu as _cupy_gpu

ENGINE_META = "engine.json"


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("building engines needs the tensorrt Python package (TensorRT 10.x, JetPack 6 on "
                           "Jetson); it is not installed here") from e
    return trt


def current_gpu() -> Tuple[str, str]:
    """(name, 'sm_XY') of GPU 0, through cupy or torch (whichever is installed)."""
    name, sm = _cupy_gpu()
    if name != "unknown":
        return name, sm
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"sm_{major}{minor}"
    except Exception:
        pass
    return "unknown", "unknown"


def _profile_shapes(onnx_path, max_batch: int, opt_batch: int, max_seq: int, opt_seq: int,
                    max_past: int) -> Dict[str, Tuple[tuple, tuple, tuple]]:
    """min / opt / max shapes of every dynamic input, from the ONNX dim names (batch, seq, past)."""
    import onnx
    m = onnx.load(str(onnx_path), load_external_data=False)
    ranges = {"batch": (1, opt_batch, max_batch), "seq": (1, opt_seq, max_seq), "past": (0, min(64, max_past), max_past)}
    shapes = {}
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if not any(d.dim_param for d in dims):
            continue
        lo, opt, hi = [], [], []
        for d in dims:
            r = ranges.get(d.dim_param, (d.dim_value,) * 3) if d.dim_param else (d.dim_value,) * 3
            lo.append(r[0]); opt.append(r[1]); hi.append(r[2])
        shapes[inp.name] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def build_engine(onnx_path, engine_path, plugin_library: Optional[str] = None, fp16: bool = True,
                 max_batch: int = 8, opt_batch: int = 1, max_seq: int = 64, opt_seq: int = 64, max_past: int = 1024,
                 workspace_mib: int = 1024, timing_cache: Optional[str] = None,
                 progress: Optional[Callable] = None) -> dict:
    """Build a serialized engine from an ONNX file; returns the metadata written beside it (engine.json)."""
    trt = _trt()
    import onnx
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if plugin_library:
        trt.get_plugin_registry().load_library(str(plugin_library))
    model = onnx.load(str(onnx_path), load_external_data=False)
    fp16_graph = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if fp16_graph else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: the TensorRT ONNX parser failed: {errors} (plugin-flavour graphs need "
                           "the plugin library: --plugins build/libtost_edge_plugins.so)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16 and not fp16_graph:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in _profile_shapes(onnx_path, max_batch, opt_batch, max_seq, opt_seq, max_past).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if progress is not None:
        config.progress_monitor = progress
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    _atomic_write(engine_path, bytes(serialized))
    if timing_cache:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    name, sm = current_gpu()
    meta = {"tensorrt_version": trt.__version__, "gpu": name, "sm": sm,
            "precision": "fp16 (strongly typed)" if fp16_graph else ("fp16" if fp16 else "fp32"),
            "plugin_library": str(Path(plugin_library).resolve()) if plugin_library else None,
            "plugin_library_sha256": file_sha256(plugin_library) if plugin_library else None,
            "onnx": str(onnx_path), "onnx_sha256": file_sha256(onnx_path),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "profile": {"max_batch": max_batch, "max_seq": max_seq, "max_past": max_past}}
    return meta


def build_bundle_engines(bundle_dir, plugin_library: Optional[str] = None, **kwargs) -> dict:
    """prefill.engine and step.engine for a stream bundle, and engine.json beside them."""
    bundle = Path(bundle_dir)
    man = json.loads((bundle / "manifest.json").read_text())
    engines, meta = {}, {}
    for graph, max_seq in (("prefill", man.get("prefill_chunk", 64)), ("step", 1)):
        engine = bundle / f"{graph}.engine"
        meta = build_engine(bundle / man["graphs"][graph]["file"], engine, plugin_library,
                            max_seq=max_seq, opt_seq=max_seq, **kwargs)
        engines[graph] = engine.name
    meta = {**meta, "engines": engines}
    meta.pop("onnx", None)
    meta.pop("onnx_sha256", None)
    _atomic_write(bundle / ENGINE_META, json.dumps(meta, indent=2).encode())
    return meta


def write_engine_metadata(engine_path, meta: dict) -> Path:
    path = Path(str(engine_path) + ".json")
    _atomic_write(path, json.dumps(meta, indent=2).encode())
    return path


def _atomic_write(path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rich_progress_monitor(console=None):
    """An IProgressMonitor that shows TensorRT's build phases as rich progress bars."""
    trt = _trt()
    from rich.progress import Progress

    class RichProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.progress = Progress(console=console, transient=True)
            self.tasks = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if not self.tasks:
                self.progress.start()
            self.tasks[phase_name] = self.progress.add_task(phase_name, total=max(num_steps, 1))

        def step_complete(self, phase_name, step):
            self.progress.update(self.tasks[phase_name], completed=step + 1)
            return True  # keep building

        def phase_finish(self, phase_name):
            self.progress.remove_task(self.tasks.pop(phase_name))
            if not self.tasks:
                self.progress.stop()

    return RichProgressMonitor()
