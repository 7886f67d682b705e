"""The TensorRT backend's own code (engine I/O, profile checks, calls split to the engine's batch) on a machine
without TensorRT: stand-in `tensorrt` and `cupy` modules whose "engine" runs the bundle's ONNX graph in
onnxruntime, with the optimisation profile of a real build (tost_edge.export.engine._profile_shapes). What the
stand-ins cannot show (TensorRT's parser, tactics, plugins) is tests/export/test_engine.py's, on a device."""
import json
import sys
import types

import numpy as np
import pytest

from tost_edge.runtime import Session

VERSION = "10.3.0-stand-in"
ENGINE_BATCH = 2


class _Buffer:
    """A cupy array stand-in: host memory, with a device pointer the stand-in context resolves."""
    live = {}

    def __init__(self, array):
        self.array = array
        self.data = types.SimpleNamespace(ptr=id(self))
        _Buffer.live[id(self)] = self

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def set(self, array, stream=None):
        assert array.shape == self.array.shape and array.dtype == self.array.dtype
        self.array[...] = array

    def get(self, stream=None):
        return self.array.copy()


class _Stream:
    """A CUDA stream stand-in: between begin_capture and end_capture, work is recorded into a graph, not run."""
    by_ptr = {}

    def __init__(self, non_blocking=False):
        self.ptr, self.recording = id(self), None
        _Stream.by_ptr[self.ptr] = self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        assert self.recording is None, "synchronize during a capture"

    def begin_capture(self):
        self.recording = []

    def end_capture(self):
        graph, self.recording = _Graph(self.recording), None
        return graph


class _Graph:
    launches = 0

    def __init__(self, work):
        self.work = work

    def launch(self, stream=None):
        _Graph.launches += 1
        for run in self.work:
            run()


def _fake_cupy():
    cp = types.ModuleType("cupy")
    cp.asarray = lambda a: _Buffer(np.array(a))
    # fresh device memory holds garbage: NaN, and token ids no table has (an engine run on them fails)
    cp.empty = lambda shape, dtype: _Buffer(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else 1 << 30, dtype))
    cp.asnumpy = lambda b: b.array.copy()
    props = {"name": b"Stand-in GPU", "major": 8, "minor": 7}
    cp.cuda = types.SimpleNamespace(Stream=_Stream,
                                    runtime=types.SimpleNamespace(getDeviceProperties=lambda i: props))
    return cp


class _Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile.get(name, (self.engine.shapes[name],) * 3)
        ok = len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _outputs(self, shapes_only=False):
        feeds = {n: _Buffer.live[self.addresses[n]].array for n in self.engine.inputs}
        for n, a in feeds.items():
            assert a.shape == self.shapes[n], f"{n}: buffer {a.shape}, shape set {self.shapes[n]}"
            if shapes_only:         # TensorRT infers output shapes from the input shapes alone
                feeds[n] = np.zeros_like(a)
        return dict(zip(self.engine.outputs, self.engine.session.run(None, feeds)))

    def get_tensor_shape(self, name):
        return self._outputs(shapes_only=True)[name].shape

    def execute_async_v3(self, stream):
        def run():                  # reads the buffers' contents when it runs, as a replayed graph does
            self.engine.executed += 1
            for name, value in self._outputs().items():
                _Buffer.live[self.addresses[name]].array[...] = value
        recording = _Stream.by_ptr[stream].recording
        if recording is None:
            run()
        elif self.engine.capture_fails:     # as TensorRT does for what a graph cannot hold
            return False
        else:
            self.engine.captured += 1
            recording.append(run)
        return True


class _Engine:
    def __init__(self, spec):
        import onnxruntime as ort
        self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.profile = {k: [tuple(x) for x in v] for k, v in spec["profile"].items()}
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        types_ = {i.name: i.type for i in self.session.get_inputs() + self.session.get_outputs()}
        self.types = {n: {"tensor(float)": np.float32, "tensor(int64)": np.int64}[t] for n, t in types_.items()}
        self.shapes = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape)
                       for i in self.session.get_inputs() + self.session.get_outputs()}
        self.num_io_tensors = len(self.inputs) + len(self.outputs)
        self.executed = self.captured = 0
        self.capture_fails = False

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name):
        return "input" if name in self.inputs else "output"

    def get_tensor_dtype(self, name):
        return self.types[name]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0 and -1 in self.shapes[name], f"{name}: no profile for a fixed shape"
        return self.profile[name]

    def create_execution_context(self):
        return _Context(self)


def _fake_tensorrt(loaded):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda t: t
    trt.init_libnvinfer_plugins = lambda logger, namespace: True

    def load_library(path):
        if not isinstance(path, str):
            raise TypeError(f"load_library: expected a path, got {path!r}")
        loaded.append(path)

    trt.get_plugin_registry = lambda: types.SimpleNamespace(load_library=load_library)
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda blob: _Engine(json.loads(blob)))
    return trt


@pytest.fixture
def stand_ins(monkeypatch):
    loaded = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(loaded))
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    return loaded


def _engines(bundle, max_batch=ENGINE_BATCH):
    """Stand-in engines of a bundle with the optimisation profile `tost-edge build` would give them."""
    from tost_edge.export.engine import _profile_shapes
    man = json.loads((bundle / "manifest.json").read_text())
    engines = {}
    for graph, seq in (("prefill", man.get("prefill_chunk", 64)), ("step", 1)):
        onnx_path = bundle / man["graphs"][graph]["file"]
        profile = _profile_shapes(onnx_path, max_batch, 1, seq, seq, 1024)
        (bundle / f"{graph}.engine").write_text(json.dumps({"onnx": str(onnx_path), "profile": profile}))
        engines[graph] = f"{graph}.engine"
    meta = {"tensorrt_version": VERSION, "gpu": "Stand-in GPU", "sm": "sm_87", "plugin_library": None,
            "engines": engines, "profile": {"max_batch": max_batch, "max_seq": 64, "max_past": 1024}}
    (bundle / "engine.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["tost_lm_tiny", "gpt_lm_tiny"])
def test_engines_of_a_portable_bundle_stream_like_onnxruntime(lm_bundles, tmp_path, stand_ins, name):
    import shutil
    _, path = lm_bundles[name]
    bundle = tmp_path / "bundle"
    shutil.copytree(path, bundle)
    _engines(bundle)
    trt, ort = Session(bundle, backend="tensorrt"), Session(bundle)
    assert trt.max_batch == ENGINE_BATCH and ort.max_batch is None
    assert stand_ins == []          # no plugin library to load for a portable bundle's engines
    prompts = [np.arange(1, 1 + n) for n in (3, 5, 3, 70, 1)]
    a = [trt.open_stream() for _ in prompts]
    b = [ort.open_stream() for _ in prompts]
    for x, y in zip(trt.prefill_batch(a, prompts), ort.prefill_batch(b, prompts)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    if name == "gpt_lm_tiny":       # a KV cache steps streams of one position only
        a, b = a[:3:2], b[:3:2]
    np.testing.assert_allclose(trt.step_batch(a, [7] * len(a)), ort.step_batch(b, [7] * len(b)), rtol=1e-5, atol=1e-6)
    for s, t in zip(a, b):
        assert s.position == t.position
        for k in t.state:
            np.testing.assert_allclose(s.state[k], t.state[k], rtol=1e-5, atol=1e-6)


def test_feeds_outside_the_engines_profile_are_refused_by_name(lm_bundles, tmp_path, stand_ins):
    import shutil
    bundle = tmp_path / "bundle"
    shutil.copytree(lm_bundles["tost_lm_tiny"][1], bundle)
    _engines(bundle)
    backend = Session(bundle, backend="tensorrt").backend
    with pytest.raises(ValueError, match=r"step engine: input tokens has shape \(3,\), outside the engine's "
                                         r"profile \(1,\) \.\. \(2,\)"):
        backend.run("step", {"tokens": np.zeros(3, np.int64), "pos": np.zeros(3, np.int64)})
    with pytest.raises(ValueError, match=r"prefill engine: input tokens has shape \(1, 65\), outside"):
        backend.run("prefill", {"tokens": np.zeros((1, 65), np.int64)})


@pytest.mark.parametrize("graphs", [True, False], ids=["cuda-graphs", "enqueue"])
def test_fixed_state_steps_replay_one_cuda_graph_per_batch_size(lm_bundles, tmp_path, stand_ins, graphs):
    import shutil
    bundle = tmp_path / "bundle"
    shutil.copytree(lm_bundles["tost_lm_tiny"][1], bundle)
    _engines(bundle)
    trt, ort = Session(bundle, backend="tensorrt", cuda_graphs=graphs), Session(bundle)
    step = trt.backend.engines["step"].engine
    launches = _Graph.launches
    a, b = trt.open_stream(), ort.open_stream()
    a.prefill([1, 2, 3]), b.prefill([1, 2, 3])
    for token in [4, 5, 6, 7, 8, 9]:            # one stream: the graph replays with each step's state
        np.testing.assert_allclose(a.step(token), b.step(token), rtol=1e-5, atol=1e-6)
    pair, twin = [a, trt.open_stream()], [b, ort.open_stream()]
    for token in [1, 2, 3]:                     # two streams: another graph, for batch 2
        np.testing.assert_allclose(trt.step_batch(pair, [token, 7]), ort.step_batch(twin, [token, 7]),
                                   rtol=1e-5, atol=1e-6)
    for k in b.state:
        np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-5, atol=1e-6)
    if graphs:   # a warm-up and a capture a batch size, then every step a replay
        assert (len(trt.backend.step_graphs), step.captured, _Graph.launches - launches) == (2, 2, 9)
        assert step.executed == 2 + 9
    else:
        assert (trt.backend.step_graphs, step.captured, _Graph.launches - launches, step.executed) == ({}, 0, 0, 9)


def test_a_kv_cache_enqueues_each_step(lm_bundles, tmp_path, stand_ins):
    import shutil
    bundle = tmp_path / "bundle"
    shutil.copytree(lm_bundles["gpt_lm_tiny"][1], bundle)
    _engines(bundle)
    trt = Session(bundle, backend="tensorrt")
    stream = trt.open_stream()
    stream.prefill([1, 2])
    for token in [3, 4, 5]:                     # the cache grows: new shapes every step
        stream.step(token)
    assert not trt.backend.cuda_graphs and trt.backend.step_graphs == {}
    assert trt.backend.engines["step"].engine.executed == 3


def test_cli_bench_on_engines_with_and_without_cuda_graphs(lm_bundles, tmp_path, stand_ins):
    import shutil

    from tost_edge.cli import main
    bundle = tmp_path / "bundle"
    shutil.copytree(lm_bundles["tost_lm_tiny"][1], bundle)
    _engines(bundle)
    for flag, graphs in (([], True), (["--no-cuda-graphs"], False)):
        out = tmp_path / f"bench{graphs}.json"
        args = ["bench", str(bundle), "--backend", "tensorrt", "--positions", "0,4", "--steps", "2", "--batch", "2"]
        assert main(args + flag + ["--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["cuda_graphs"] is graphs and [r["position"] for r in res["rows"]] == [0, 4]


def test_a_step_that_cannot_be_captured_is_enqueued_with_a_warning(lm_bundles, tmp_path, stand_ins):
    import shutil
    bundle = tmp_path / "bundle"
    shutil.copytree(lm_bundles["tost_lm_tiny"][1], bundle)
    _engines(bundle)
    trt, ort = Session(bundle, backend="tensorrt"), Session(bundle)
    trt.backend.engines["step"].engine.capture_fails = True
    a, b = trt.open_stream(), ort.open_stream()
    with pytest.warns(RuntimeWarning, match="capturing it into a CUDA graph failed .* every step is enqueued"):
        np.testing.assert_allclose(a.step(4), b.step(4), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.step(5), b.step(5), rtol=1e-5, atol=1e-6)
    assert not trt.backend.cuda_graphs and trt.backend.step_graphs == {}
