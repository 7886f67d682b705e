"""python samples/04_train_triton/train.py [--backend triton|torch] [--steps N] [--check-against torch] [--packed]
                                          [--save DIR]

Train a small causal ToST LM with the Triton kernels (backend="triton": TSSA's forward and backward as fused
kernels) on a task it can learn in a few hundred steps, each token one more than the last (mod 256); optionally
train a copy with the other backend from the same weights on the same batches and compare the losses step by step,
then save the weights (safetensors + config) for `tost-edge export --checkpoint`. --packed trains on documents of
random lengths packed end to end (model(idx, cu_seqlens=...): each document as if alone, no padding).

On a GPU the kernels run natively; on a machine without one, --interpret runs them in Triton's CPU interpreter
(exact, about a thousand times slower: keep --batch and --seq small there).
"""
import argparse
import copy
import os
import sys
import time


def parse():
    _, what, *more = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(description=what, epilog="\n\n".join(more),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tost_lm_tiny", help="a causal LM of the registry (default tost_lm_tiny)")
    ap.add_argument("--backend", choices=["triton", "torch"], default="triton")
    ap.add_argument("--check-against", choices=["triton", "torch"],
                    help="also train a copy with this backend and compare the losses of its first --check-steps")
    ap.add_argument("--check-steps", type=int, default=20,
                    help="steps compared (default 20: rounding differences grow as training goes on)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64, help="tokens per training sequence")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", help="cuda or cpu (default: cuda where there is one)")
    ap.add_argument("--interpret", action="store_true", help="run the Triton kernels in Triton's CPU interpreter")
    ap.add_argument("--checkpointing", action="store_true",
                    help="recompute each block's activations in the backward pass (model.set_checkpointing)")
    ap.add_argument("--deterministic", action="store_true",
                    help="torch.use_deterministic_algorithms(True): the same bits from every run")
    ap.add_argument("--packed", action="store_true",
                    help="each step's batch x seq tokens as documents of 1 to seq tokens packed end to end "
                         "(cu_seqlens), not rows of seq tokens")
    ap.add_argument("--save", metavar="DIR", help="write config.json and model.safetensors here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in ("steps", "batch", "seq", "check_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def batch(gen, size, seq, vocab, device):
    """[size, seq + 1] token ids, each one more than the last (mod vocab) from a random start."""
    import torch
    start = torch.randint(0, vocab, (size, 1), generator=gen)
    return ((start + torch.arange(seq + 1)) % vocab).to(device)


def packed_batch(gen, size, seq, vocab, device):
    """size * seq inputs as documents of 1 to seq of them, end to end (models.pack_documents: each document's
    targets are its own next tokens, so none crosses into the next document)."""
    import torch
    from tost_edge.models import pack_documents
    docs, total = [], 0
    while total < size * seq:
        n = min(int(torch.randint(1, seq + 1, (1,), generator=gen)), size * seq - total)
        docs.append((torch.randint(0, vocab, (1,), generator=gen) + torch.arange(n + 1)) % vocab)
        total += n
    return pack_documents(docs, device)


def loss_of_step(model, gen, args, device):
    import torch
    if args.packed:
        docs = packed_batch(gen, args.batch, args.seq, model.config.vocab_size, device)
        logits = model(docs.idx, cu_seqlens=docs.cu_seqlens)                     # [1, total, vocab]
        return torch.nn.functional.cross_entropy(logits[0], docs.targets[0])
    x = batch(gen, args.batch, args.seq, model.config.vocab_size, device)
    logits = model(x[:, :-1])                                                # [B, T, vocab]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def train(model, backend, args, device, steps):
    """Losses of `steps` AdamW steps on batches drawn from a generator seeded with args.seed."""
    import torch
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        loss = loss_of_step(model, gen, args, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"  [{backend}] step {step:4d}  loss {losses[-1]:.4f}  "
                  f"({(time.perf_counter() - t0) / (step + 1) * 1e3:.0f} ms/step)", flush=True)
    return losses


def accuracy(model, args, device):
    import torch
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = batch(gen, 8, args.seq, model.config.vocab_size, device)
    with torch.no_grad():
        return (model(x[:, :-1]).argmax(-1) == x[:, 1:]).float().mean().item()


def main() -> int:
    args = parse()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"   # read when Triton compiles the kernels, so set before any runs
    if args.deterministic:                     # cuBLAS's deterministic matmuls need it set before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    if args.deterministic:
        torch.use_deterministic_algorithms(True)

    from tost_edge import models
    from tost_edge.models import io
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.interpret else "cpu")
    torch.manual_seed(args.seed)
    model = models.create(args.model).to(device).set_checkpointing(args.checkpointing)
    twin = copy.deepcopy(model).set_backend(args.check_against) if args.check_against else None
    model.set_backend(args.backend)
    print(f"{args.model}: {model.num_params() / 1e6:.2f}M parameters on {device}, backend {args.backend}, "
          f"batch {args.batch} x {args.seq} tokens" + (f" as packed documents of 1 to {args.seq}" if args.packed
                                                       else ""))
    try:
        losses = train(model, args.backend, args, device, args.steps)
    except (RuntimeError, ValueError) as e:   # no GPU and no interpreter, --seq past the model's positions: say so
        hint = " (train.py: --interpret)" if "TRITON_INTERPRET" in str(e) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    print(f"next-token accuracy on new sequences: {accuracy(model, args, device):.1%}")
    status = 0
    if twin is not None:
        # fp32 kernels follow the reference to rounding; the losses drift apart slowly as the weights do
        steps = min(args.steps, args.check_steps)
        other = train(twin, args.check_against, args, device, steps)
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses, other))
        ok = worst <= 1e-3
        print(f"{args.backend} against {args.check_against}: largest relative loss difference over the first "
              f"{steps} steps {worst:.2e} ({'agree' if ok else 'DIFFER'}, tolerance 1e-3)")
        status = 0 if ok else 1
    if args.save:
        path = io.save(model, args.save)
        print(f"saved {path / io.WEIGHTS_NAME} (export: tost-edge export {args.model} --checkpoint {path} ...)")
    return status


if __name__ == "__main__":
    sys.exit(main())
