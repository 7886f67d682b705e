"""`tost-edge export`: registry model (random weights or a checkpoint) -> ONNX graph or stream bundle."""
from __future__ import annotations

EXAMPLES = """examples:
  tost-edge export tost_lm_base --graph stream --flavor portable -o bundle/
  tost-edge export tost_lm_tiny --graph step --flavor plugin --dtype fp16 -o step.onnx
  tost-edge export tost_cab_small_12_p16 --checkpoint tost_small.pth -o tost_small.onnx --save-golden golden/
"""


def cmd_export(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from . import models
    from .export import export_onnx
    from .models.io import load_checkpoint, saved_config
    console = Console()
    # a folder written by models.io.save says how its model was built (layers, widths, block size)
    config = saved_config(args.checkpoint, args.model) if args.checkpoint else {}
    if args.unbounded:
        config["unbounded"] = True
    model = models.create(args.model, **config)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(f"exporting {args.model}")
        t0 = time.perf_counter()
        report = export_onnx(model, args.output, graph=args.graph, flavor=args.flavor, dtype=args.dtype,
                             opset=args.opset, check=not args.no_check, save_golden=args.save_golden,
                             steps=args.steps, progress=lambda msg: progress.update(task, description=msg))
    print_report(console, report)
    console.print(f"[green]wrote[/] {report.path} in {time.perf_counter() - t0:.1f} s")
    return 0


def print_report(console, report) -> None:
    from rich.table import Table
    for g in report.graphs:
        t = Table(title=f"{g.graph} graph: {g.file}, {g.size_bytes / 2**20:.2f} MiB, exported in {g.seconds:.1f} s")
        t.add_column("I/O")
        t.add_column("name")
        t.add_column("dtype")
        t.add_column("shape")
        for kind, rows in (("in", g.inputs), ("out", g.outputs)):
            for name, dt, shape in rows:
                t.add_row(kind, name, dt, "[" + ", ".join(map(str, shape)) + "]")
        console.print(t)
        hist = ", ".join(f"{op} {n}" for op, n in list(g.ops.items())[:12])
        console.print(f"  ops: {sum(g.ops.values())} nodes ({hist}{', ...' if len(g.ops) > 12 else ''}); "
                      f"custom plugin nodes: {g.custom_nodes}")
    if report.parity:
        t = Table(title=f"parity against the fp32 PyTorch model ({report.flavor}, {report.dtype})")
        for c in ("graph", "tensor", "max abs", "relative", "ok"):
            t.add_column(c, justify="right" if c in ("max abs", "relative") else "left")
        for p in report.parity:
            t.add_row(p.graph, p.tensor, f"{p.max_abs:.2e}", f"{p.rel:.2e}", "[green]yes[/]" if p.ok else "[red]NO[/]")
        console.print(t)


def add_commands(sub) -> None:
    import argparse
    s = sub.add_parser("export", help="export a registry model to ONNX (graph, or a stream bundle)",
                       description="Export a registry model to ONNX and check it against PyTorch.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("model", help="registry name (see `tost-edge models`)")
    s.add_argument("--checkpoint", help="weights: an official ToST checkpoint (.pth, {'model': ...} or bare), a "
                   ".safetensors file, or a folder saved by tost_edge.models.io.save (its config.json sets the "
                   "model's sizes); random weights when omitted")
    s.add_argument("--graph", default="full", choices=["full", "prefill", "step", "stream"],
                   help="full: whole input; prefill: token block + state; step: one token + state; "
                   "stream: folder bundle with prefill + step + manifest.json for the runtime (default: full)")
    s.add_argument("--flavor", default="portable", choices=["portable", "plugin"],
                   help="portable: standard ONNX ops; plugin: custom nodes for the TensorRT plugins")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"],
                   help="activation dtype; state and token statistics stay fp32 (default: fp32)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20 (default: 17)")
    s.add_argument("--unbounded", action="store_true", help="no absolute position tables (endless streams)")
    s.add_argument("--no-check", action="store_true", help="skip checker and parity checks")
    s.add_argument("--save-golden", metavar="DIR", help="write polygraphy-compatible inputs/outputs for engine checks")
    s.add_argument("--steps", type=int, default=50, help="tokens for the step-vs-full check of bundles (default 50)")
    s.add_argument("-o", "--output", required=True, help="output .onnx file, or folder for --graph stream")
    s.set_defaults(func=cmd_export)
    add_build_command(sub)


BUILD_EXAMPLES = """examples (on the Jetson, with TensorRT and the plugin library built there):
  tost-edge export tost_lm_base --graph stream --flavor plugin --dtype fp16 -o bundle/
  tost-edge build bundle/ --plugins build/libtost_edge_plugins.so --max-batch 8
  tost-edge run bundle/ --backend tensorrt --prompt "Hello"
  tost-edge build model.onnx -o model.engine --plugins build/libtost_edge_plugins.so
"""


def cmd_build(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from .export.engine import build_bundle_engines, build_engine, rich_progress_monitor, write_engine_metadata
    console = Console()
    src = Path(args.source)
    kwargs = dict(fp16=not args.fp32, max_batch=args.max_batch, workspace_mib=args.workspace_mib,
                  timing_cache=args.timing_cache, progress=rich_progress_monitor(console))
    if src.is_dir():
        meta = build_bundle_engines(src, args.plugins, max_past=args.max_past, **kwargs)
        console.print(f"[green]built[/] {', '.join(meta['engines'].values())} in {src} "
                      f"(TensorRT {meta['tensorrt_version']}, {meta['gpu']} {meta['sm']}, {meta['precision']})")
        return 0
    if not args.output:
        raise ValueError("-o/--output: expected the engine path when building a single ONNX file")
    meta = build_engine(src, args.output, args.plugins, max_seq=args.max_seq, opt_seq=args.max_seq,
                        max_past=args.max_past, **kwargs)
    write_engine_metadata(args.output, meta)
    console.print(f"[green]built[/] {args.output} (TensorRT {meta['tensorrt_version']}, {meta['gpu']} {meta['sm']})")
    return 0


def add_build_command(sub) -> None:
    import argparse
    s = sub.add_parser("build", help="build TensorRT engines from a plugin-flavour bundle or ONNX file",
                       description="Build TensorRT engines (needs tensorrt; run it on the target device).",
                       epilog=BUILD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("source", help="stream bundle folder (builds prefill.engine + step.engine) or an .onnx file")
    s.add_argument("-o", "--output", help="engine path (for a single .onnx)")
    s.add_argument("--plugins", help="path to libtost_edge_plugins.so (needed for plugin-flavour graphs)")
    s.add_argument("--fp32", action="store_true", help="no fp16 tactics for fp32 graphs (fp16 graphs stay fp16)")
    s.add_argument("--max-batch", type=int, default=8,
                   help="largest batch of the optimisation profile (default 8); the runtime splits more streams "
                        "into calls of this many")
    s.add_argument("--max-seq", type=int, default=64, help="largest token block for a single prefill graph")
    s.add_argument("--max-past", type=int, default=1024, help="largest KV-cache length (softmax baselines)")
    s.add_argument("--workspace-mib", type=int, default=1024)
    s.add_argument("--timing-cache", help="timing-cache file, read if present and updated")
    s.set_defaults(func=cmd_build)
