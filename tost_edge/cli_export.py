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
    from .models.io import load_checkpoint
    console = Console()
    overrides = {}
    if args.unbounded:
        overrides["unbounded"] = True
    model = models.create(args.model, **overrides)
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
    s.add_argument("--checkpoint", help="weights: an official ToST checkpoint (.pth, {'model': ...} or bare) or "
                   ".safetensors; random weights when omitted")
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
