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
