"""Prefilling many prompts at once (Session.prefill_batch, as the scheduler admits a tick's requests) against the
same prompts prefilled one stream at a time (stream.prefill), side by side in one run, through the tost-edge runtime.

    python benchmarks/prefill_batch.py                                 # tost_lm_small, onnxruntime on CPU
    python benchmarks/prefill_batch.py --model tost_lm_tiny --reps 1 --json /tmp/prefill.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tost_edge import models  # noqa: E402
from tost_edge.export import export_onnx  # noqa: E402
from tost_edge.runtime import Session  # noqa: E402
from tost_edge.runtime.session import prefill_plan  # noqa: E402


def cases(rng, chunk: int):
    """(label, prompt lengths): equal short prompts, a mix shorter than a chunk, full chunks."""
    return [("32 x 16 tokens", [16] * 32), (f"32 of 8-{chunk - 2} tokens", [int(n) for n in rng.integers(8, chunk - 1, 32)]),
            (f"8 x {chunk} tokens", [chunk] * 8)]


def best_of(reps: int, fn) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tost_lm_small", help="registry name of a causal LM (default tost_lm_small)")
    ap.add_argument("--reps", type=int, default=3, help="timed repeats of each way; the best is kept (default 3)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_onnx(models.create(args.model).eval(), bundle, graph="stream", steps=4)
        session = Session(bundle)
        chunk, vocab = session.bundle.prefill_chunk, session.bundle.vocab_size
        rng = np.random.default_rng(0)
        for label, lengths in cases(rng, chunk):
            prompts = [rng.integers(0, vocab, n) for n in lengths]
            alone = best_of(args.reps, lambda: [session.open_stream().prefill(p) for p in prompts])
            together = best_of(args.reps, lambda: session.prefill_batch([session.open_stream() for _ in prompts],
                                                                        prompts))
            tokens = int(sum(lengths))
            calls = len(prefill_plan(lengths, chunk))
            rows.append({"case": label, "tokens": tokens, "one_by_one_ms": alone * 1e3, "together_ms": together * 1e3,
                         "one_by_one_tok_s": tokens / alone, "together_tok_s": tokens / together,
                         "ratio": alone / together, "calls_together": calls,
                         "calls_one_by_one": sum(-(-n // chunk) for n in lengths)})
            r = rows[-1]
            print(f"{label:22s} {tokens:6,d} tokens: one by one {r['one_by_one_ms']:.1f} ms "
                  f"({r['one_by_one_tok_s']:,.0f} tok/s, {r['calls_one_by_one']} calls), together "
                  f"{r['together_ms']:.1f} ms ({r['together_tok_s']:,.0f} tok/s, {calls} calls): {r['ratio']:.2f}x",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "reps": args.reps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
