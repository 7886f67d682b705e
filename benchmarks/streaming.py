"""Per-token decode latency by stream position: causal ToST (fixed-size state) against the softmax GPT-2
baseline (KV cache), same trunk, both exported to portable ONNX and run by the tost-edge runtime.

    python benchmarks/streaming.py                       # onnxruntime on CPU (CUDA too when available)
    python benchmarks/streaming.py --positions 16,256,1024,4096 --steps 48 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tost_edge import models  # noqa: E402
from tost_edge.cli_stream import bench_bundle  # noqa: E402
from tost_edge.export import export_onnx  # noqa: E402

PAIRS = {"tost_lm_small": "ToST (causal TSSA, fp32 state)", "gpt_lm_small": "GPT-2 baseline (KV cache)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", default="16,256,1024,4096")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--providers", default=None, help="comma-separated onnxruntime providers (default: best available)")
    args = ap.parse_args()
    positions = [int(p) for p in args.positions.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    block = max(positions) + args.steps + 8
    results = {"machine": platform.processor() or platform.machine(), "positions": positions, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, label in PAIRS.items():
            model = models.create(name, block_size=block)
            bundle = Path(tmp) / name
            export_onnx(model, bundle, graph="stream", steps=8)
            res = bench_bundle(bundle, positions, args.steps)
            res["label"] = label
            res["params"] = model.num_params()
            results["models"][name] = res
            for r in res["rows"]:
                print(f"{name:14s} pos {r['position']:5d}: p50 {r['step_ms_p50']:.3f} ms, "
                      f"state {r['state_bytes_per_stream']:,} B")
    tost, gpt = (results["models"][n]["rows"] for n in PAIRS)
    lat = {r["position"]: r["step_ms_p50"] for r in tost}
    summary = {
        "tost_latency_ratio_last_over_first": lat[positions[-1]] / lat[positions[0]],
        "gpt_latency_ratio_last_over_first": gpt[-1]["step_ms_p50"] / gpt[0]["step_ms_p50"],
        "tost_state_bytes": tost[0]["state_bytes_per_stream"],
        "gpt_kv_bytes_at_1024": next((r["state_bytes_per_stream"] for r in gpt if r["position"] == 1024), None),
    }
    if summary["gpt_kv_bytes_at_1024"]:
        summary["state_over_kv_at_1024"] = summary["tost_state_bytes"] / summary["gpt_kv_bytes_at_1024"]
    results["summary"] = summary
    (out / "streaming.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))
    plot(results, out / "streaming.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results["models"].items():
        pos = [r["position"] for r in res["rows"]]
        a.plot(pos, [r["step_ms_p50"] for r in res["rows"]], marker="o", label=res["label"])
        b.plot(pos, [r["state_bytes_per_stream"] / 1024 for r in res["rows"]], marker="o", label=res["label"])
    for ax, title, unit in ((a, "decode latency (p50)", "ms / token"), (b, "state per stream", "KiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stream position (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    b.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
