import json

import numpy as np
import onnx
import pytest
import torch

from tost_edge import models
from tost_edge.export import PLUGIN_OPS, export_onnx
from tost_edge.export.validate import run, session

LMS = ["tost_lm_tiny", "linear_lm_tiny", "gpt_lm_tiny"]
VISION = ["tost_cab_test", "vit_cab_test"]
EXPECTED_CUSTOM = {"tost_lm_tiny": "CausalTSSA_TRT", "linear_lm_tiny": "CausalLinearAttention_TRT",
                   "tost_cab_test": "TSSA_TRT"}


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
@pytest.mark.parametrize("graph", ["full", "prefill", "step"])
@pytest.mark.parametrize("name", LMS)
def test_lm_graphs_match_pytorch(tmp_path, name, graph, flavor):
    report = export_onnx(models.create(name), tmp_path / "m.onnx", graph=graph, flavor=flavor)
    assert report.ok and report.parity
    assert max(p.rel for p in report.parity) <= 1e-4
    m = onnx.load(str(tmp_path / "m.onnx"))
    ops = {n.op_type for n in m.graph.node}
    if flavor == "plugin" and name in EXPECTED_CUSTOM:
        assert EXPECTED_CUSTOM[name] in ops
        node = next(n for n in m.graph.node if n.op_type == EXPECTED_CUSTOM[name])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"tost_edge"
        assert any(o.domain == "tost_edge" for o in m.opset_import)
    else:
        assert not ops & set(PLUGIN_OPS)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
@pytest.mark.parametrize("name", VISION)
def test_vision_full_graph(tmp_path, name, flavor):
    report = export_onnx(models.create(name), tmp_path / "v.onnx", flavor=flavor)
    assert report.ok and max(p.rel for p in report.parity) <= 1e-4


def test_dynamic_batch_and_sequence(tmp_path):
    m = models.create("tost_lm_tiny").eval()
    export_onnx(m, tmp_path / "p.onnx", graph="prefill")
    sess = session(tmp_path / "p.onnx")
    for B, T in [(1, 1), (3, 17)]:
        tokens = torch.randint(0, 256, (B, T))
        state = m.init_state(B)
        feeds = {"tokens": tokens.numpy(), "pos": state["pos"].numpy(),
                 **{f"state_in.{k}": v.numpy() for k, v in state.items() if k != "pos"}}
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        np.testing.assert_allclose(out["logits"], m(tokens).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
@pytest.mark.parametrize("name", LMS + ["tost_video_test"])
def test_stream_bundle_step_equals_full_over_50_steps(tmp_path, name, flavor):
    report = export_onnx(models.create(name), tmp_path / "b", graph="stream", flavor=flavor, steps=50)
    assert report.ok
    step_rows = [p for p in report.parity if p.graph == "step x50"]
    assert step_rows and step_rows[0].rel <= 1e-4
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["format"] == "tost-edge-stream" and man["flavor"] == flavor
    assert {"prefill", "step"} <= set(man["graphs"])
    assert all(s["dtype"] == "float32" and s["input"] == f"state_in.{s['name']}" for s in man["state"])


@pytest.mark.parametrize("name", LMS + ["tost_cab_test"])
def test_fp16_export_keeps_state_fp32(tmp_path, name):
    graph = "stream" if name in LMS else "full"
    out = tmp_path / ("b" if graph == "stream" else "v.onnx")
    report = export_onnx(models.create(name), out, graph=graph, dtype="fp16", steps=20)
    assert report.ok and max(p.rel for p in report.parity) <= 2e-2
    if graph == "stream":
        m = onnx.load(str(out / "step.onnx"))
        types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}
        assert all(t == onnx.TensorProto.FLOAT for n, t in types.items() if n.startswith("state_"))
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)


def test_fp16_long_stream_state_stays_finite_and_accurate(tmp_path):
    """100k steps of the fp16 step graph: the fp32 running sums neither overflow nor drift."""
    cfg = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=32, unbounded=True)
    m = models.create("tost_lm_tiny", **cfg).eval()
    export_onnx(m, tmp_path / "b", graph="stream", dtype="fp16", steps=10)
    sess = session(tmp_path / "b" / "step.onnx")
    n = 100_000
    tokens = torch.randint(0, 32, (1, n))
    names = ["0.sum_wsq", "0.sum_pi_wsq", "0.sum_pi"]
    st = {k: np.zeros(s, np.float32) for k, s in [("0.sum_wsq", (1, 2, 8)), ("0.sum_pi_wsq", (1, 2, 8)),
                                                   ("0.sum_pi", (1, 2))]}
    pos = np.zeros(1, np.int64)
    outs = [f"state_out.{k}" for k in names]
    tok = tokens.numpy()
    for t in range(n):
        res = sess.run(outs, {"tokens": tok[:, t], "pos": pos, **{f"state_in.{k}": st[k] for k in names}})
        st = dict(zip(names, res))
        pos += 1
    ref = m.double()
    state = ref.init_state(1)
    state = {k: (v.double() if v.is_floating_point() else v) for k, v in state.items()}
    with torch.no_grad():
        for s in range(0, n, 5000):
            block = tokens[:, s:s + 5000]
            x = ref.transformer.wte(block)
            blk = ref.transformer.h[0]
            _, new = blk.attn(blk.ln_1(x), {q: state[f"0.{q}"] for q in ("sum_wsq", "sum_pi_wsq", "sum_pi")}, s)
            state.update({f"0.{q}": v for q, v in new.items()})
    for k in names:
        got, want = st[k].astype(np.float64), state[k].numpy()
        assert np.isfinite(got).all()
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-3, k


def test_golden_files_are_polygraphy_compatible(tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json
    export_onnx(models.create("tost_lm_tiny"), tmp_path / "s.onnx", graph="step", save_golden=tmp_path / "g")
    inputs = load_json(str(tmp_path / "g" / "step.inputs.json"))
    results = RunResults.load(str(tmp_path / "g" / "step.outputs.json"))
    out = run(tmp_path / "s.onnx", inputs[0], "portable")
    want = results["pytorch-fp32"][0]
    np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(graph="sideways"), r"graph: expected one of"),
    (dict(flavor="tensorrt"), r"flavor: expected one of \('portable', 'plugin'\), got 'tensorrt'"),
    (dict(dtype="int8"), r"dtype: expected one of \('fp32', 'fp16'\), got 'int8'"),
    (dict(opset=11), r"opset: expected 17..20, got 11"),
], ids=["graph", "flavor", "dtype", "opset"])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(models.create("tost_lm_tiny"), tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_vision_has_no_step_graph(tmp_path):
    with pytest.raises(ValueError, match="has only the 'full' graph"):
        export_onnx(models.create("tost_cab_test"), tmp_path / "x.onnx", graph="step")


def test_failed_check_leaves_nothing(tmp_path, monkeypatch):
    from tost_edge.export import onnx_export
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", -1.0)  # every parity row fails
    with pytest.raises(RuntimeError, match="export check failed"):
        export_onnx(models.create("tost_lm_tiny"), tmp_path / "x.onnx", graph="step")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_errors(tmp_path, capsys):
    from tost_edge.cli import main
    assert main(["export", "tost_lm_tiny", "--graph", "stream", "-o", str(tmp_path / "b"), "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "parity against the fp32 PyTorch model" in out and "state_out.1.sum_pi" in out
    assert main(["export", "tost_lm_nope", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "expected a registry name" in capsys.readouterr().err
    ck = tmp_path / "c.pt"
    torch.save(models.create("linear_lm_tiny").state_dict(), ck)
    assert main(["export", "tost_lm_tiny", "--checkpoint", str(ck), "-o", str(tmp_path / "y.onnx")]) == 2
    err = capsys.readouterr().err
    assert "missing keys ['transformer.h.0.attn.denom_bias'" in err
    assert "transformer.h.0.attn.c_attn.weight: checkpoint (192, 64) vs model (64, 64)" in err
    assert not (tmp_path / "y.onnx").exists()


def test_external_data_is_gathered_into_one_file(tmp_path):
    """What the exporter does for >2 GiB graphs (a file per tensor) ends as graph + one .data file."""
    from onnx.external_data_helper import convert_model_to_external_data
    from tost_edge.export.onnx_export import _consolidate_external_data
    export_onnx(models.create("tost_lm_tiny"), tmp_path / "src.onnx", graph="step", check=False)
    work = tmp_path / "work"
    work.mkdir()
    m = onnx.load(str(tmp_path / "src.onnx"))
    convert_model_to_external_data(m, all_tensors_to_one_file=False, size_threshold=0)
    onnx.save_model(m, str(work / "step.onnx"))
    assert len(list(work.iterdir())) > 3
    _consolidate_external_data(work / "step.onnx")
    assert sorted(f.name for f in work.iterdir()) == ["step.onnx", "step.onnx.data"]
    out = run(work / "step.onnx", {"tokens": np.array([1, 2]), "pos": np.zeros(2, np.int64),
                                   **{f"state_in.{i}.{q}": np.zeros((2, 4, 16) if q != "sum_pi" else (2, 4), np.float32)
                                      for i in range(2) for q in ("sum_wsq", "sum_pi_wsq", "sum_pi")}}, "portable")
    assert out["logits"].shape == (2, 256)
