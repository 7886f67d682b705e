"""ONNX export of registry models: graphs full / prefill / step / stream (bundle), flavours portable / plugin,
dtypes fp32 / fp16, with validation on by default. Nothing half-written is ever left at the output path."""
from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from . import graphs
from .plugin_nodes import DOMAIN, PLUGIN_OPS, register_schemas, register_symbolics
from .validate import Parity, check_model, compare, run

FLAVORS = ("portable", "plugin")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MIN_OPSET, MAX_OPSET = 17, 20
BUNDLE_FORMAT = "tost-edge-stream"
BUNDLE_VERSION = 1
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass
class GraphReport:
    graph: str
    file: str
    size_bytes: int
    ops: Dict[str, int]
    custom_nodes: int
    inputs: List[tuple]
    outputs: List[tuple]
    seconds: float


@dataclass
class ExportReport:
    path: str
    model: str
    flavor: str
    dtype: str
    graphs: List[GraphReport] = field(default_factory=list)
    parity: List[Parity] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parity)


def _check_args(graph, flavor, dtype, opset):
    if graph not in graphs.GRAPHS:
        raise ValueError(f"graph: expected one of {graphs.GRAPHS}, got {graph!r}")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor: expected one of {FLAVORS}, got {flavor!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    if not (MIN_OPSET <= opset <= MAX_OPSET):
        raise ValueError(f"opset: expected {MIN_OPSET}..{MAX_OPSET}, got {opset}")


def _summarise(graph: str, path: Path, seconds: float) -> GraphReport:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    size = sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.stem))

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
        return out
    return GraphReport(graph, path.name, size, dict(ops.most_common()), sum(ops[o] for o in PLUGIN_OPS),
                       io(m.graph.input), io(m.graph.output), seconds)


def _export_copy(model, flavor: str, dtype: str):
    """A copy of the model in eval mode and the export dtype, with plugin custom ops when asked
    (a copy, so the caller's weights are never rounded to fp16)."""
    import copy
    m = copy.deepcopy(model).eval().to(DTYPES[dtype])
    for mod in m.modules():
        if hasattr(mod, "backend"):
            mod.backend = "plugin" if flavor == "plugin" else "torch"
    return m


def _export_graph(model, graph: str, path: Path, flavor: str, dtype: str, opset: int) -> None:
    # a folder of its own, so that whatever the exporter writes beside the graph belongs to this graph alone
    scratch = Path(tempfile.mkdtemp(prefix=f".{graph}.", dir=path.parent))
    try:
        _export_graph_into(model, graph, scratch / path.name, flavor, dtype, opset)
        for f in scratch.iterdir():
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    check_model(path)


def _export_graph_into(model, graph: str, path: Path, flavor: str, dtype: str, opset: int) -> None:
    model.eval()  # the TorchScript exporter can leave a module in training mode after an earlier export
    spec = graphs.graph_spec(model, graph)
    kwargs = {}
    if flavor == "plugin" and getattr(model, "family", "tost") != "softmax":
        register_symbolics(opset)
        kwargs["custom_opsets"] = {DOMAIN: 1}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(spec.module, spec.args, str(path), input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_axes=spec.dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False, **kwargs)
    _consolidate_external_data(path)


def _consolidate_external_data(path: Path) -> None:
    """Graphs over protobuf's 2 GiB (tost_lm_large in fp32) come out of the exporter with one external file per
    tensor; gather them into one `<graph>.onnx.data` beside the graph. path's folder holds this graph alone."""
    import onnx
    strays = [f for f in path.parent.iterdir() if f != path]
    if not strays:
        return
    model = onnx.load(str(path))  # reads the external tensors
    for f in strays:
        f.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    os.chmod(path.parent / (path.name + ".data"), 0o644)


# -- parity --------------------------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _graph_feeds(model, spec: graphs.GraphSpec, seed: int) -> Dict[str, np.ndarray]:
    """Fresh random data in the graph's layout; pos and state as the spec made them."""
    g = torch.Generator().manual_seed(seed)
    feeds = {}
    for name, t in zip(spec.input_names, spec.args):
        if name == "tokens":
            t = torch.randint(0, model.config.vocab_size, t.shape, generator=g)
        elif name in ("images", "frames"):
            t = torch.randn(t.shape, generator=g)
        feeds[name] = _np(t)
    return feeds


def _torch_outputs(spec: graphs.GraphSpec, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The fp32 PyTorch model on the same inputs (the reference every export is held to)."""
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    with torch.no_grad():
        out = spec.module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: _np(o.float()) for n, o in zip(spec.output_names, out)}


def _cast_feeds(feeds, dtype):
    return {k: (v.astype(np.float16) if dtype == "fp16" and k in ("images", "frames") else v) for k, v in feeds.items()}


def _parity(model, graph: str, path: Path, flavor: str, dtype: str, golden: Optional[Path]) -> List[Parity]:
    spec = graphs.graph_spec(model, graph, batch=2, seq=5, prefix=4)
    feeds = _graph_feeds(model, spec, seed=123)
    want = _torch_outputs(spec, feeds)
    got = run(path, _cast_feeds(feeds, dtype), flavor)
    if golden is not None:
        from .golden import save_golden
        save_golden(golden, graph, _cast_feeds(feeds, dtype), want)
    return compare(graph, got, want, TOLERANCE[dtype])


def _step_vs_full(model, bundle: Path, flavor: str, dtype: str, steps: int) -> List[Parity]:
    """Drive the step graph token by token and compare with the fp32 PyTorch model over the whole sequence."""
    g = torch.Generator().manual_seed(7)
    tokens = graphs.random_data(model, 2, steps, step=False, generator=g)
    data = graphs.data_name(model)
    with torch.no_grad():
        full = _np(model(tokens))
    st = {k: _np(v) for k, v in model.init_state(2).items()}
    names = graphs.state_names(model)
    path = bundle / "step.onnx"
    outs = []
    if flavor == "plugin":
        from .validate import reference_evaluator
        ev = reference_evaluator(path)
        out_names = [o.name for o in ev.proto_.graph.output]
        call = lambda feeds: dict(zip(out_names, ev.run(None, feeds)))  # noqa: E731
    else:
        from .validate import session
        sess = session(path)
        out_names = [o.name for o in sess.get_outputs()]
        call = lambda feeds: dict(zip(out_names, sess.run(None, feeds)))  # noqa: E731
    for t in range(steps):
        feeds = {data: _np(tokens[:, t]), "pos": st["pos"], **{f"state_in.{n}": st[n] for n in names}}
        res = call(_cast_feeds(feeds, dtype))
        outs.append(res["logits"])
        st = {"pos": st["pos"] + 1, **{n: res[f"state_out.{n}"] for n in names}}
    return compare(f"step x{steps}", {"logits": np.stack(outs, 1)}, {"logits": full}, TOLERANCE[dtype])


# -- public API -----------------------------------------------------------------------------------------
def export_onnx(model, path, graph: str = "full", flavor: str = "portable", dtype: str = "fp32", opset: int = 17,
                check: bool = True, save_golden: Optional[str] = None, steps: int = 50,
                progress=None) -> ExportReport:
    """Export `model` to ONNX.

    Args:
        model:  a registry model (tost_edge.models.create(...)); causal LMs have prefill / step / stream graphs.
        path:   a .onnx file, or a folder for graph="stream" (prefill.onnx, step.onnx, manifest.json).
        graph:  "full" | "prefill" | "step" | "stream".
        flavor: "portable" (standard ops, any ONNX runtime) | "plugin" (TSSA_TRT / CausalTSSA_TRT /
                CausalLinearAttention_TRT nodes for the TensorRT plugins).
        dtype:  "fp32" | "fp16" (token statistics, cumulative sums and state stay fp32).
        check:  run the checker and parity against the PyTorch model; a failed check leaves nothing at path.
        save_golden: folder for polygraphy-compatible inputs/outputs (`polygraphy run --load-inputs/--load-outputs`).
        steps:  tokens the step graph is driven for in the step-vs-full check.
        progress: optional callable(str) told about each stage.
    Returns an ExportReport (graphs with size, op histogram, custom nodes, I/O; parity rows).
    """
    _check_args(graph, flavor, dtype, opset)
    say = progress or (lambda _msg: None)
    if graph in ("prefill", "step", "stream") and not graphs.is_lm(model):
        raise ValueError(f"graph: {type(model).__name__} has only the 'full' graph, got {graph!r}")
    register_schemas()
    t0 = time.perf_counter()
    was_training = model.training
    if next(model.parameters()).dtype != torch.float32:
        import copy
        model = copy.deepcopy(model).float()
    model.eval()
    path = Path(path)
    name = getattr(model, "registry_name", type(model).__name__)
    report = ExportReport(str(path), name, flavor, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        todo = ["prefill", "step"] if graph == "stream" else [graph]
        golden = Path(save_golden) if save_golden else None
        exported = _export_copy(model, flavor, dtype)  # one copy serves every graph
        for g in todo:
            say(f"exporting {g} graph ({flavor}, {dtype})")
            t1 = time.perf_counter()
            _export_graph(exported, g, work / f"{g}.onnx", flavor, dtype, opset)
            report.graphs.append(_summarise(g, work / f"{g}.onnx", time.perf_counter() - t1))
            if check:
                say(f"checking {g} graph against PyTorch")
                report.parity += _parity(model, g, work / f"{g}.onnx", flavor, dtype, golden)
        del exported
        if graph == "stream":
            if check:
                n = min(steps, model.config.block_size) if not model.config.unbounded else steps
                say(f"driving the step graph {n} times against the full model")
                report.parity += _step_vs_full(model, work, flavor, dtype, n)
            (work / "manifest.json").write_text(json.dumps(manifest(model, flavor, dtype, opset, report), indent=2))
        if check and not report.ok:
            bad = [p for p in report.parity if not p.ok]
            raise RuntimeError("export check failed (nothing written): " + "; ".join(
                f"{p.graph}/{p.tensor}: max abs {p.max_abs:.2e}, rel {p.rel:.2e} > {TOLERANCE[dtype]:.0e}" for p in bad))
        _commit(work, path, graph)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        model.train(was_training)
    report.seconds = time.perf_counter() - t0
    return report


def _commit(work: Path, path: Path, graph: str) -> None:
    """Move the finished files into place: a bundle folder is swapped whole, a single file atomically."""
    if graph == "stream":
        if path.exists() and not (path / "manifest.json").exists() and any(path.iterdir()):
            raise ValueError(f"output: {path} exists and is not a stream bundle; refusing to overwrite it")
        final = Path(tempfile.mkdtemp(prefix=f".{path.name}.new.", dir=path.parent))
        for f in work.iterdir():
            shutil.move(str(f), final / f.name)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(final, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(final, path)
        return
    src = work / f"{graph}.onnx"
    for f in work.iterdir():  # external-data files first, the .onnx last
        if f != src:
            os.replace(f, path.parent / f.name)
    os.replace(src, path)


def manifest(model, flavor: str, dtype: str, opset: int, report: ExportReport) -> dict:
    from ..models.io import config_hash, model_config
    names = graphs.state_names(model)
    spec = model.state_spec(1)
    state = []
    for n in names:
        shape = ["batch"] + list(spec[n][0][1:])
        if graphs.grows(model, n):
            shape[2] = "past"
        state.append({"name": n, "input": f"state_in.{n}", "output": f"state_out.{n}", "shape": shape,
                      "dtype": "float32", "grows": graphs.grows(model, n)})
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "model": {**model_config(model), "family": model.family, "config_hash": config_hash(model)},
        "kind": model.kind, "vocab_size": model.config.vocab_size,
        "frame_size": model.img_size if model.kind == "video" else None,
        "block_size": None if model.config.unbounded else model.config.block_size,
        "flavor": flavor, "dtype": dtype, "opset": opset,
        "graphs": {g.graph: {"file": g.file, "inputs": g.inputs, "outputs": g.outputs} for g in report.graphs},
        "inputs": {"data": graphs.data_name(model), "pos": "pos"}, "logits": "logits",
        "prefill_chunk": 64, "state": state,
    }
