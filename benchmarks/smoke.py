"""--smoke, shared by the GPU benchmark scripts: the whole script on CPU under Triton's interpreter with tiny shapes,
so that a mistake in a script shows in CI rather than on a GPU (nothing it times means anything); and the output
gradient their timed backward passes take (output_grad)."""
from __future__ import annotations

import argparse
import os
import sys

import torch


def add_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--smoke", action="store_true", help="check this script on CPU (TRITON_INTERPRET=1, tiny shapes)")


def check(args: argparse.Namespace, script: str) -> bool:
    """args.smoke, after checking that the script can run: the interpreter for --smoke, a CUDA GPU otherwise."""
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA GPU (or --smoke to check the script on CPU)")
    return args.smoke


def output_grad(fn) -> torch.Tensor:
    """The gradient fed to fn's (first) output in a timed backward, made once beforehand: filled inside the timed
    call it would add a write of the output's size that the op does not make (~50 µs at TSSA's B64·N4096·C384 in
    bf16 on an H200; runs 1-5 included it), and a launch."""
    with torch.no_grad():
        out = fn()
    return torch.ones_like(out[0] if isinstance(out, tuple) else out)
