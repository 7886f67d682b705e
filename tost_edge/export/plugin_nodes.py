"""The custom ONNX nodes of the plugin flavour, one per TensorRT plugin.

op_type = plugin name; attributes are named exactly like the plugin fields, plus `plugin_version` and
`plugin_namespace`, which the TensorRT ONNX parser reads to find the creator. Schemas are registered with
onnx.defs so that onnx.checker and shape inference accept the nodes.

    TSSA_TRT(w [B,N,C] T, temp [H] f32) -> y [B,N,C] T                                       num_heads: int
    CausalTSSA_TRT(w [B,T,C] T, temp [H] f32, denom_bias [H,Tmax] f32, pos [B] i32,
                   sum_wsq [B,H,D] f32, sum_pi_wsq [B,H,D] f32, sum_pi [B,H] f32)
                -> y [B,T,C] T, sum_wsq, sum_pi_wsq, sum_pi (f32)                           num_heads: int, bounded: int
    CausalLinearAttention_TRT(q [B,T,H,D] T, k [B,T,H,D] T, v [B,T,H,M] T, kv [B,H,D,M] f32, k_sum [B,H,D] f32)
                -> y [B,T,H,M] T, kv, k_sum (f32)                                             eps: float
T is float32 or float16.
"""
from __future__ import annotations

DOMAIN = "tost_edge"
PLUGIN_NAMESPACE = "tost_edge"
PLUGIN_VERSION = "1"
TSSA = "TSSA_TRT"
CAUSAL_TSSA = "CausalTSSA_TRT"
CAUSAL_LINEAR_ATTENTION = "CausalLinearAttention_TRT"
PLUGIN_OPS = (TSSA, CAUSAL_TSSA, CAUSAL_LINEAR_ATTENTION)

# plugin field names and ONNX attribute types (kept identical in plugins/*/ and the creators' field lists)
FIELDS = {TSSA: {"num_heads": "int"}, CAUSAL_TSSA: {"num_heads": "int", "bounded": "int"},
          CAUSAL_LINEAR_ATTENTION: {"eps": "float"}}

_registered = False


def register_schemas() -> None:
    """Register the three ops with onnx.defs (idempotent)."""
    global _registered
    if _registered:
        return
    from onnx import defs
    from onnx.defs import OpSchema
    FP, A = OpSchema.FormalParameter, OpSchema.Attribute
    T = ("T", ["tensor(float)", "tensor(float16)"], "activations")
    common = [A("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version", required=False),
              A("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace", required=False)]
    schemas = [
        OpSchema(TSSA, DOMAIN, 1, "Token Statistics Self-Attention (bidirectional)",
                 inputs=[FP("w", "T"), FP("temp", "tensor(float)")], outputs=[FP("y", "T")], type_constraints=[T],
                 attributes=[A("num_heads", OpSchema.AttrType.INT, "H")] + common),
        OpSchema(CAUSAL_TSSA, DOMAIN, 1, "Causal TSSA over a block with carried fp32 state",
                 inputs=[FP("w", "T"), FP("temp", "tensor(float)"), FP("denom_bias", "tensor(float)"),
                         FP("pos", "tensor(int32)"), FP("sum_wsq", "tensor(float)"), FP("sum_pi_wsq", "tensor(float)"),
                         FP("sum_pi", "tensor(float)")],
                 outputs=[FP("y", "T"), FP("sum_wsq_out", "tensor(float)"), FP("sum_pi_wsq_out", "tensor(float)"),
                          FP("sum_pi_out", "tensor(float)")], type_constraints=[T],
                 attributes=[A("num_heads", OpSchema.AttrType.INT, "H"),
                             A("bounded", OpSchema.AttrType.INT, "1: add denom_bias[h, pos]; 0: no position table")]
                 + common),
        OpSchema(CAUSAL_LINEAR_ATTENTION, DOMAIN, 1, "Causal linear attention (elu+1) with carried fp32 state",
                 inputs=[FP("q", "T"), FP("k", "T"), FP("v", "T"), FP("kv", "tensor(float)"),
                         FP("k_sum", "tensor(float)")],
                 outputs=[FP("y", "T"), FP("kv_out", "tensor(float)"), FP("k_sum_out", "tensor(float)")],
                 type_constraints=[T], attributes=[A("eps", OpSchema.AttrType.FLOAT, "normaliser epsilon")] + common),
    ]
    for s in schemas:
        if not defs.has(s.name, DOMAIN):
            defs.register_schema(s)
    _registered = True


def register_symbolics(opset: int) -> None:
    """Teach the TorchScript ONNX exporter to emit one plugin node per tost_edge custom op."""
    import torch
    from torch.onnx import register_custom_op_symbolic, symbolic_helper
    import tost_edge.ops.custom  # noqa: F401  (defines the custom ops)

    meta = dict(plugin_version_s=PLUGIN_VERSION, plugin_namespace_s=PLUGIN_NAMESPACE)
    f32, i32 = 1, 6  # onnx.TensorProto.FLOAT, INT32

    def typed(outs, like):
        # give the exporter each output's type and shape (they equal the matching input's)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for o, src in zip(outs, like):
            o.setType(src.type())
        return outs if len(outs) > 1 else outs[0]

    @symbolic_helper.parse_args("v", "v", "i")
    def tssa(g, w, temp, num_heads):
        return typed(g.op(f"{DOMAIN}::{TSSA}", w, g.op("Cast", temp, to_i=f32), num_heads_i=num_heads, **meta), [w])

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "i", "b")
    def causal_tssa(g, w, temp, bias, pos, s1, s2, s3, num_heads, bounded):
        outs = g.op(f"{DOMAIN}::{CAUSAL_TSSA}", w, g.op("Cast", temp, to_i=f32), g.op("Cast", bias, to_i=f32),
                    g.op("Cast", pos, to_i=i32), s1, s2, s3, num_heads_i=num_heads, bounded_i=int(bounded),
                    outputs=4, **meta)
        return typed(outs, [w, s1, s2, s3])

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "f")
    def causal_linear_attention(g, q, k, v, kv, k_sum, eps):
        outs = g.op(f"{DOMAIN}::{CAUSAL_LINEAR_ATTENTION}", q, k, v, kv, k_sum, eps_f=eps, outputs=3, **meta)
        return typed(outs, [v, kv, k_sum])

    register_custom_op_symbolic("tost_edge::tssa", tssa, opset)
    register_custom_op_symbolic("tost_edge::causal_tssa", causal_tssa, opset)
    register_custom_op_symbolic("tost_edge::causal_linear_attention", causal_linear_attention, opset)
    del torch
