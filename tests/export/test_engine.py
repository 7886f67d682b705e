"""Engine build: the metadata check runs everywhere; the build itself only where tensorrt is importable."""
import json

import pytest

from tost_edge.runtime.engine_meta import check_engine_metadata, file_sha256


def meta_for(tmp_path, **over):
    lib = tmp_path / "libtost_edge_plugins.so"
    lib.write_bytes(b"plugin library bytes")
    meta = {"tensorrt_version": "10.3.0", "gpu": "Orin", "sm": "sm_87", "plugin_library": str(lib),
            "plugin_library_sha256": file_sha256(lib)}
    meta.update(over)
    return meta, lib


def test_matching_engine_is_accepted(tmp_path):
    meta, _ = meta_for(tmp_path)
    check_engine_metadata(meta, trt_version="10.3.0", gpu=("Orin", "sm_87"))


@pytest.mark.parametrize("trt,gpu,match", [
    ("10.7.0", ("Orin", "sm_87"), "built with TensorRT 10.3.0, this is TensorRT 10.7.0"),
    ("10.3.0", ("NVIDIA Thor", "sm_110"), r"built for Orin \(sm_87\), this GPU is NVIDIA Thor \(sm_110\)"),
], ids=["other-tensorrt", "other-gpu"])
def test_foreign_engine_is_refused(tmp_path, trt, gpu, match):
    meta, _ = meta_for(tmp_path)
    with pytest.raises(RuntimeError, match=match):
        check_engine_metadata(meta, trt_version=trt, gpu=gpu)


def test_changed_plugin_library_is_refused(tmp_path):
    meta, lib = meta_for(tmp_path)
    lib.write_bytes(b"rebuilt")
    with pytest.raises(RuntimeError, match="changed since the build"):
        check_engine_metadata(meta, trt_version="10.3.0", gpu=("Orin", "sm_87"))


def test_build_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    from tost_edge.cli import main
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine")]) == 2
    assert "needs the tensorrt Python package" in capsys.readouterr().err


def test_tensorrt_build_and_run_of_a_plugin_bundle(tmp_path):
    """On a machine with TensorRT, cupy, a GPU and the plugin library: build and stream through engines."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("cupy")
    import os

    import numpy as np
    lib = os.environ.get("TOST_EDGE_PLUGIN_LIB")
    if not lib:
        pytest.skip("set TOST_EDGE_PLUGIN_LIB to libtost_edge_plugins.so")
    from tost_edge import models
    from tost_edge.export import export_onnx
    from tost_edge.export.engine import build_bundle_engines
    from tost_edge.runtime import Session
    plug, port = tmp_path / "plugin", tmp_path / "portable"
    model = models.create("tost_lm_tiny")
    export_onnx(model, plug, graph="stream", flavor="plugin", steps=4)
    export_onnx(model, port, graph="stream", flavor="portable", steps=4)
    meta = build_bundle_engines(plug, lib, fp16=False)
    assert json.loads((plug / "engine.json").read_text())["engines"] == meta["engines"]
    build_bundle_engines(port, None, fp16=False)            # standard ops only: no plugin library to load
    a = Session(plug, backend="tensorrt").open_stream()                       # steps replayed from a CUDA graph
    c = Session(plug, backend="tensorrt", cuda_graphs=False).open_stream()    # every step enqueued
    d = Session(port, backend="tensorrt").open_stream()
    b = Session(port).open_stream()
    want = b.prefill([1, 2, 3])
    for s in (a, c, d):
        np.testing.assert_allclose(s.prefill([1, 2, 3]), want, rtol=1e-3, atol=1e-4)
    for token in (4, 5, 6, 7):
        want = b.step(token)
        for s in (a, c, d):
            np.testing.assert_allclose(s.step(token), want, rtol=1e-3, atol=1e-4)
