"""Engine metadata (engine.json) checks, torch-free: an engine runs only where it was built."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Tuple


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def current_gpu() -> Tuple[str, str]:
    """(name, 'sm_XY') of GPU 0 through cupy; ('unknown', 'unknown') without it."""
    try:
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(0)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        return name, f"sm_{p['major']}{p['minor']}"
    except Exception:
        return "unknown", "unknown"


def check_engine_metadata(meta: dict, trt_version: Optional[str] = None, gpu: Optional[Tuple[str, str]] = None) -> None:
    """Refuse engines built by another TensorRT version or for another GPU, or with another plugin library."""
    if trt_version is None:
        import tensorrt
        trt_version = tensorrt.__version__
    gpu = gpu or current_gpu()
    problems = []
    if meta.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {meta.get('tensorrt_version')}, this is TensorRT {trt_version}")
    if meta.get("sm") != gpu[1] or meta.get("gpu") != gpu[0]:
        problems.append(f"built for {meta.get('gpu')} ({meta.get('sm')}), this GPU is {gpu[0]} ({gpu[1]})")
    lib = meta.get("plugin_library")
    if lib:
        if not Path(lib).is_file():
            problems.append(f"plugin library {lib} is missing")
        elif file_sha256(lib) != meta.get("plugin_library_sha256"):
            problems.append(f"plugin library {lib} changed since the build (sha256 differs)")
    if problems:
        raise RuntimeError("engine refused: " + "; ".join(problems) + ". Rebuild it on this device with "
                           "`tost-edge build`.")
