"""Streaming commands of `tost-edge` (quickstart)."""
from __future__ import annotations


def cmd_quickstart(args) -> int:
    import time

    import torch
    from rich.console import Console

    from . import models
    console = Console()
    torch.manual_seed(args.seed)
    model = models.create(args.model).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len))
    with torch.no_grad():
        t0 = time.perf_counter()
        logits, state = model.prefill(prompt)
        t1 = time.perf_counter()
        tok = logits[:, -1].argmax(-1)
        out = []
        for _ in range(args.tokens):
            out.append(int(tok))
            logits, state = model.step(tok, state)
            tok = logits.argmax(-1)
        t2 = time.perf_counter()
    console.print(f"model {args.model}: prefill {args.prompt_len} tokens in {1e3 * (t1 - t0):.1f} ms, "
                  f"streamed {args.tokens} tokens at {args.tokens / (t2 - t1):.1f} tokens/s (torch, recurrent form)")
    console.print(f"tokens: {out[:32]}{' ...' if len(out) > 32 else ''}")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("quickstart", help="build a small causal ToST LM and stream tokens from it on CPU")
    s.add_argument("--model", default="tost_lm_small", help="registry name of a causal LM (default tost_lm_small)")
    s.add_argument("--prompt-len", type=int, default=32)
    s.add_argument("--tokens", type=int, default=256, help="tokens to stream after the prompt")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_quickstart)
