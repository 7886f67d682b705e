"""The `tost-edge` command. Run `tost-edge --help`, or `tost-edge COMMAND --help` for one command."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EPILOG = """examples:
  tost-edge models                                  list the registry with parameter counts
  tost-edge check-env                               what is installed and what that enables
  tost-edge triton-settings --tuned sweep.json      check tuned kernel launch settings, show what they change
  tost-edge quickstart                              export a small ToST LM and stream tokens on CPU
  tost-edge export tost_lm_base --graph stream -o bundle/   ONNX stream bundle for the runtime
  tost-edge run bundle/ --prompt "Hello" --max-new-tokens 64  generate through the runtime (no torch needed)
  tost-edge bench bundle/ --positions 16,256,1024           decode latency by position, state bytes
  tost-edge build bundle/ --plugins build/libtost_edge_plugins.so   TensorRT engines (on the device)
  tost-edge stream-video tost_video_small --frames 200     per-frame video model, FPS and latency

`tost-edge COMMAND --help` explains each command. Docs: docs/export.md, docs/runtime.md, docs/plugins.md.
"""


def cmd_models(args) -> int:
    import torch
    from rich.table import Table

    from . import models
    table = Table(title="tost-edge models")
    for col in ("name", "kind", "params", "description"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for name in models.list_models(args.kind):
        entry = models.REGISTRY[name]
        with torch.device("meta"):  # counts parameters without allocating them
            n = models.create(name).num_params()
        table.add_row(name, entry.kind, f"{n / 1e6:.2f}M", entry.description)
    console.print(table)
    return 0


def cmd_check_env(args) -> int:
    from .env import check_env, render
    render(check_env(), console)
    return 0


def cmd_triton_settings(args) -> int:
    from rich.table import Table
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"Triton is not installed here ({e}); pip install tost-edge[triton]") from e
    from .ops.triton import settings
    before = settings.current()
    if args.tuned:
        settings.apply(args.tuned)
    table = Table(title="Triton kernel launch settings", caption=args.tuned and f"with {args.tuned}")
    for col in ("op", "setting", "value", "default"):
        table.add_column(col)
    for op, values in settings.current().items():
        for name, value in values.items():
            changed = value != before[op][name] or type(value) is not type(before[op][name])
            if changed or not args.changed:
                table.add_row(op, name, f"[bold]{value}[/bold]" if changed else str(value),
                              str(before[op][name]) if changed else "")
    if table.row_count:
        console.print(table)
    else:
        console.print(f"{args.tuned} changes nothing: each value it sets is the one in force")
    if args.tuned:
        _, device, _ = settings.check(args.tuned)
        console.print(f"measured on: {device or 'not recorded'}; apply it to training with "
                      f"{settings.ENV}={args.tuned} or settings.apply() (docs/training.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tost-edge", description="Token Statistics Transformers on edge GPUs: models, "
                                "ONNX export, TensorRT engines and a streaming runtime.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("models", help="list registry models with parameter counts")
    s.add_argument("--kind", choices=["vision", "lm", "video"], help="only this kind")
    s.set_defaults(func=cmd_models)
    s = sub.add_parser("check-env", help="versions of Python, torch, onnx, onnxruntime, triton, tensorrt, CUDA")
    s.set_defaults(func=cmd_check_env)
    s = sub.add_parser("triton-settings", help="the Triton kernels' launch settings; --tuned checks a sweep.json",
                       description="The launch settings the Triton training kernels run with (tssa, causal_tssa, "
                       "causal_linear_attention). With --tuned FILE (a sweep.json of benchmarks/sweep.py, or "
                       "{op: {SETTING: value}}) every name and type in FILE is checked and the values it changes are "
                       "shown in bold beside the default. " + "Settings in TOST_EDGE_TRITON_SETTINGS are already "
                       "applied (they show as the default).")
    s.add_argument("--tuned", metavar="FILE", help="a sweep.json or {op: {SETTING: value}} JSON file to check")
    s.add_argument("--changed", action="store_true", help="list only the settings FILE changes")
    s.set_defaults(func=cmd_triton_settings)
    from . import cli_export, cli_stream
    cli_export.add_commands(sub)
    cli_stream.add_commands(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        from rich.text import Text
        err_console.print(Text("error: ", style="bold red") + Text(str(e)), soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
