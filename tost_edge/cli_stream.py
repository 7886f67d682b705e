"""Streaming commands of `tost-edge`: quickstart, run, bench, stream-video (torch-free except quickstart's export)."""
from __future__ import annotations

import json
from pathlib import Path


def _stats_table(title: str, rows: dict):
    from rich.table import Table
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in rows.items():
        t.add_row(k, "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    return t


def _decode(tokens, vocab: int) -> str:
    if vocab < 256:
        return ""
    return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


def cmd_quickstart(args) -> int:
    import time

    from rich.console import Console

    from . import models
    from .export import export_onnx
    from .runtime import Session
    console = Console()
    bundle = Path(args.bundle)
    import torch
    torch.manual_seed(args.seed)
    model = models.create(args.model)  # an unknown name fails here, before anything is written
    stale = True
    if (bundle / "manifest.json").exists() and not args.force:
        stale = json.loads((bundle / "manifest.json").read_text())["model"].get("name") != args.model
    if stale:
        console.print(f"exporting {args.model} (random weights) to a portable ONNX stream bundle at {bundle} ...")
        t0 = time.perf_counter()
        report = export_onnx(model, bundle, graph="stream", flavor="portable", steps=16)
        worst = max(p.rel for p in report.parity)
        console.print(f"  exported and checked in {time.perf_counter() - t0:.1f} s "
                      f"(worst relative error against PyTorch: {worst:.1e})")
    session = Session(bundle)
    stream = session.open_stream()
    prompt = list(args.prompt.encode())
    t0 = time.perf_counter()
    tokens = list(stream.generate(prompt, max_new_tokens=args.tokens, temperature=args.temperature, top_k=40,
                                  seed=args.seed))
    elapsed = time.perf_counter() - t0
    s = stream.stats.summary()
    console.print(f"streamed {len(tokens)} tokens from {args.model} through onnxruntime "
                  f"({', '.join(session.backend.providers)}): {s['decode_tokens_per_s']:.1f} tokens/s, "
                  f"p50 {s['step_ms_p50']:.2f} ms/token, state {session.bundle.state_bytes(stream.position)} bytes "
                  f"at position {stream.position} (total {elapsed:.2f} s)")
    console.print(f"tokens: {tokens[:24]}{' ...' if len(tokens) > 24 else ''}")
    return 0


def cmd_run(args) -> int:
    from rich.console import Console

    from .runtime import Session
    console = Console()
    session = Session(args.bundle, backend=args.backend)
    if session.bundle.kind != "lm":
        raise ValueError(f"bundle: `run` generates tokens; this bundle is a {session.bundle.kind} model "
                         "(use `tost-edge stream-video`)")
    if args.prompt_ids:
        prompt = [int(x) for x in args.prompt_ids.split(",")]
    else:
        if session.bundle.vocab_size < 256:
            raise ValueError("--prompt: text is encoded as bytes and needs vocab >= 256; use --prompt-ids")
        prompt = list(args.prompt.encode())
    stream = session.open_stream()
    tokens = []
    for tok in stream.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed):
        tokens.append(tok)
    stats = {"model": session.bundle.model_name, "backend": args.backend, "prompt_tokens": len(prompt),
             **stream.stats.summary(), "tokens": tokens}
    if args.json:
        print(json.dumps(stats))
        return 0
    console.print(f"tokens: {tokens}")
    text = _decode(tokens, session.bundle.vocab_size)
    if text:
        console.print(f"text: {text!r}")
    console.print(_stats_table("run", {k: v for k, v in stats.items() if k != "tokens"}))
    return 0


def bench_bundle(bundle, positions, steps: int, backend: str = "onnxruntime", batch: int = 1,
                 cuda_graphs: bool = True) -> dict:
    """Per-token latency of the step graph at given positions (state grown by prefill), state bytes."""
    import time

    import numpy as np

    from .runtime import Session
    session = Session(bundle, backend=backend, cuda_graphs=cuda_graphs)
    b = session.bundle
    if b.kind != "lm":
        raise ValueError(f"bundle: `bench` measures token streams; this bundle is a {b.kind} model "
                         "(use `tost-edge stream-video`)")
    rng = np.random.default_rng(0)
    rows = []
    for p in positions:
        streams = [session.open_stream() for _ in range(batch)]
        if p:
            session.prefill_batch(streams, [rng.integers(0, b.vocab_size, p) for _ in streams])
        lat = []
        for i in range(steps + 3):
            toks = rng.integers(0, b.vocab_size, batch)
            t0 = time.perf_counter()
            session.step_batch(streams, list(toks))
            if i >= 3:  # warm-up steps are dropped
                lat.append(time.perf_counter() - t0)
        lat = np.array(lat) * 1e3
        rows.append({"position": p, "step_ms_p50": float(np.percentile(lat, 50)),
                     "step_ms_p90": float(np.percentile(lat, 90)), "step_ms_p99": float(np.percentile(lat, 99)),
                     "tokens_per_s": batch * 1e3 / float(np.median(lat)), "state_bytes_per_stream": b.state_bytes(p)})
    n = min(256, b.block_size or 256)
    prompts = [rng.integers(0, b.vocab_size, n) for _ in range(batch)]
    streams = [session.open_stream() for _ in range(batch)]
    t0 = time.perf_counter()
    session.prefill_batch(streams, prompts)            # the batch's streams together, as the scheduler does
    prefill_tps = batch * n / (time.perf_counter() - t0)
    from .runtime.stats import peak_rss_mib
    return {"model": b.model_name, "backend": backend, "batch": batch,
            "cuda_graphs": bool(getattr(session.backend, "cuda_graphs", False)), "providers": getattr(session.backend,
            "providers", None), "prefill_tokens_per_s": prefill_tps, "rows": rows, "peak_rss_mib": peak_rss_mib()}


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    positions = [int(x) for x in args.positions.split(",")]
    res = bench_bundle(args.bundle, positions, args.steps, args.backend, args.batch, not args.no_cuda_graphs)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    t = Table(title=f"{res['model']} on {res['backend']} (batch {res['batch']}): decode latency by position")
    for c in ("position", "p50 ms", "p90 ms", "p99 ms", "tokens/s", "state bytes/stream"):
        t.add_column(c, justify="right")
    for r in res["rows"]:
        t.add_row(str(r["position"]), f"{r['step_ms_p50']:.3f}", f"{r['step_ms_p90']:.3f}", f"{r['step_ms_p99']:.3f}",
                  f"{r['tokens_per_s']:.1f}", f"{r['state_bytes_per_stream']:,}")
    console.print(t)
    together = f"{res['batch']} streams together" if res["batch"] > 1 else "one stream"
    console.print(f"prefill: {res['prefill_tokens_per_s']:.1f} tokens/s ({together}); "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB")
    return 0


def cmd_stream_video(args) -> int:
    import time

    import numpy as np
    from rich.console import Console

    from .runtime import Session
    from .runtime.stats import peak_rss_mib
    from .runtime.video import frames_from, synthetic_frames
    console = Console()
    bundle = Path(args.bundle)
    if not (bundle / "manifest.json").exists():
        if args.bundle != "tost_video_small" and not args.bundle.startswith("tost_video"):
            raise FileNotFoundError(f"bundle: {bundle} is not a stream bundle (export one with "
                                    "`tost-edge export tost_video_small --graph stream -o DIR`)")
        from . import models
        from .export import export_onnx
        bundle = Path(args.cache) / args.bundle
        if not (bundle / "manifest.json").exists():
            console.print(f"exporting {args.bundle} (random weights) to {bundle} ...")
            export_onnx(models.create(args.bundle), bundle, graph="stream", steps=4)
    session = Session(bundle, backend=args.backend)
    if session.bundle.kind != "video":
        raise ValueError(f"bundle: expected a video model bundle, got a {session.bundle.kind} model")
    size = session.bundle.manifest["frame_size"]
    n = args.streams
    if n < 1:
        raise ValueError(f"--streams: expected at least 1, got {n}")
    if args.source is None:      # one synthetic camera per stream
        ticks = zip(*(synthetic_frames(size, args.frames, seed=i) for i in range(n)))
    else:                        # every stream sees the source's frames
        ticks = ([frame] * n for frame in frames_from(args.source, size, args.frames))
    streams = [session.open_stream() for _ in range(n)]
    preds: list = [[] for _ in range(n)]
    latency = []
    t0 = time.perf_counter()
    for frames in ticks:
        t = time.perf_counter()
        logits = session.step_batch(streams, list(frames))     # the streams' frames in one call
        latency.append(time.perf_counter() - t)
        for p, lg in zip(preds, logits):
            p.append(int(np.argmax(lg)))
    wall = time.perf_counter() - t0
    ms = np.array(latency) * 1e3 if latency else np.full(1, np.nan)
    frames_done = len(preds[0])
    res = {"model": session.bundle.model_name, "streams": n, "frames": frames_done,
           "fps": n * frames_done / wall if wall else None,
           "latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p90": float(np.percentile(ms, 90)),
           "latency_ms_p99": float(np.percentile(ms, 99)),
           "state_bytes": session.bundle.state_bytes(streams[0].position), "peak_rss_mib": peak_rss_mib()}
    if args.json:
        print(json.dumps({**res, "predictions": preds[0], **({"predictions_by_stream": preds} if n > 1 else {})}))
        return 0
    console.print(_stats_table(f"stream-video: {res['model']}", res))
    console.print(f"per-frame predictions (first 20{', stream 0' if n > 1 else ''}): {preds[0][:20]}")
    return 0


def add_commands(sub) -> None:
    import argparse
    s = sub.add_parser("quickstart", help="export a small causal ToST LM to ONNX and stream tokens through the "
                       "runtime on CPU")
    s.add_argument("--model", default="tost_lm_small", help="registry name of a causal LM (default tost_lm_small)")
    s.add_argument("--bundle", default="out/quickstart", help="where the stream bundle goes (default out/quickstart)")
    s.add_argument("--force", action="store_true", help="re-export even if the bundle exists")
    s.add_argument("--prompt", default="Token statistics ", help="prompt text (byte-level tokens)")
    s.add_argument("--tokens", type=int, default=256, help="tokens to stream after the prompt")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_quickstart)

    s = sub.add_parser("run", help="generate tokens from a prompt with a stream bundle",
                       epilog="example: tost-edge run bundle/ --prompt 'Hello' --max-new-tokens 64 --top-k 40",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("bundle", help="stream bundle folder (tost-edge export MODEL --graph stream -o DIR)")
    s.add_argument("--prompt", default="Hello", help="prompt text, encoded as bytes (vocab >= 256)")
    s.add_argument("--prompt-ids", help="comma-separated token ids instead of --prompt")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    s.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("bench", help="decode latency by position, throughput and state size of a stream bundle",
                       epilog="example: tost-edge bench bundle/ --positions 16,256,1024 --json bench.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("bundle")
    s.add_argument("--positions", default="16,256,1024", help="comma-separated stream positions")
    s.add_argument("--steps", type=int, default=32, help="timed steps per position")
    s.add_argument("--batch", type=int, default=1, help="streams stepped together")
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    s.add_argument("--no-cuda-graphs", action="store_true",
                   help="tensorrt: enqueue every step instead of replaying a CUDA graph (fixed-state models)")
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("stream-video", help="run a video model over a frame source; report FPS and latency",
                       epilog="examples:\n  tost-edge stream-video tost_video_small --frames 200\n"
                              "  tost-edge stream-video tost_video_small --streams 4     four cameras batched\n"
                              "  tost-edge stream-video video_bundle/ --source frames_dir/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("bundle", help="video stream bundle folder, or a registry video model name (exported on first use)")
    s.add_argument("--source", help="image folder, image file or video file (default: synthetic frames)")
    s.add_argument("--frames", type=int, default=100, help="frames to stream (default 100; per stream)")
    s.add_argument("--streams", type=int, default=1,
                   help="cameras stepped together, one call a frame for all (default 1): synthetic frames differ by "
                        "stream, a --source feeds every stream. fps counts the frames of all streams, latency is a "
                        "call's, state_bytes one stream's")
    s.add_argument("--cache", default="out", help="where registry models are exported (default out/)")
    s.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stream_video)
