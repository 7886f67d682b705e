"""Training-step benchmark (GPU): whole models, one optimizer step each (forward, backward, AdamW), the attention
backends side by side in one run, against the softmax baseline of the same size (PyTorch SDPA, flash kernels).

    python benchmarks/train_step.py --out benchmarks/results                  # LM at T 1024 and 4096, vision
    python benchmarks/train_step.py --seq 4096 --batch 4 --compile           # also torch.compile of each model
    python benchmarks/train_step.py --seq 16384 --vision none --checkpointing  # also with activation checkpointing
    python benchmarks/train_step.py --vision none --packed                   # also documents packed end to end
    TRITON_INTERPRET=1 python benchmarks/train_step.py --smoke --out /tmp/t   # CPU check of this script

bf16 autocast, fp32 parameters; the median of ten timed steps (CUDA events, after two untimed ones that compile and
autotune) of a whole step (gradients zeroed, forward, loss,
backward, optimizer step), tokens (images) per second, peak memory, and each row's speed against the first row of
its shape measured in the same run. A variant that runs out of memory is reported as such, and the next one runs.
--packed adds "LM packed" rows: the same B x T tokens a step as documents of 1 to T tokens (uniformly drawn) packed
into one row (models.pack_documents, cu_seqlens), for the Triton backends, beside the [B, T] rows; a padded batch of
those documents would hold T tokens for each.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import smoke  # noqa: E402  (benchmarks/smoke.py)
from tost_edge import models  # noqa: E402

SMOKE = False
LM = {"softmax (SDPA)": ("gpt_lm_{size}", "torch"), "ToST, torch": ("tost_lm_{size}", "torch"),
      "ToST, Triton": ("tost_lm_{size}", "triton"), "linear attention, Triton": ("linear_lm_{size}", "triton")}
VISION = {"softmax ViT (SDPA)": ("vit_cab_{size}", "torch"), "ToST, torch": ("tost_cab_{size}", "torch"),
          "ToST, Triton": ("tost_cab_{size}", "triton")}


def step_fn(model, batch, dev):
    """One training step of model on batch (token ids [B, T + 1], or (images, labels))."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with amp:
            if isinstance(batch, models.PackedDocuments):
                logits = model(batch.idx, cu_seqlens=batch.cu_seqlens)                  # [1, total, vocab]
                loss = torch.nn.functional.cross_entropy(logits[0].float(), batch.targets[0])
            elif isinstance(batch, tuple):
                loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
            else:
                logits = model(batch[:, :-1])                                           # [B, T, vocab]
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
    return step


def documents(gen, tokens: int, longest: int, dev) -> models.PackedDocuments:
    """`tokens` next-token pairs as documents of 1 to `longest` of them (uniform lengths), packed end to end."""
    docs, total = [], 0
    while total < tokens:
        n = min(int(torch.randint(1, longest + 1, (1,), generator=gen)), tokens - total)
        docs.append(torch.randint(0, 256, (n + 1,), generator=gen))
        total += n
    return models.pack_documents(docs, dev)


def timed(step, dev, steps=10):
    """Median ms of `steps` steps after two untimed ones (compiling, autotuning), and peak MiB."""
    if SMOKE:
        from tost_edge.ops.triton.utils import cpu_timer
        step()
        return cpu_timer(step), float("nan")
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    ms = sorted(start.elapsed_time(end) for start, end in events)[steps // 2]
    return ms, torch.cuda.max_memory_allocated() / 2**20


def run(label, shape, variants, make_batch, items, dev, compile_too, checkpointing_too, rows):
    base = None
    for variant, (name, backend) in variants.items():
        for compiled, checkpointed in itertools.product((False, True) if compile_too else (False,),
                                                        (False, True) if checkpointing_too else (False,)):
            tag = variant + (", compiled" if compiled else "") + (", checkpointed" if checkpointed else "")
            try:
                torch.manual_seed(0)
                lm_args = {"block_size": shape["T"]} if "_lm_" in name else {}      # position tables long enough
                model = models.create(name, **lm_args).to(dev).train().set_backend(backend)
                model.set_checkpointing(checkpointed)
                run_model = torch.compile(model, fullgraph=True) if compiled else model
                ms, peak = timed(step_fn(run_model, make_batch(), dev), dev)
                note = ""
            except torch.cuda.OutOfMemoryError:
                ms, peak, note = float("nan"), float("nan"), "out of memory"
            finally:
                model = run_model = None
                if dev == "cuda":
                    torch.cuda.empty_cache()
            if base is None and ms == ms:       # the first row of the shape that ran: the baseline
                base = ms
            row = {"model": label, "shape": shape, "variant": tag, "name": name, "backend": backend,
                   "compiled": compiled, "checkpointed": checkpointed, "step_ms": ms,
                   "items_per_s": items / ms * 1e3 if ms == ms else None,
                   "peak_mib": peak, "speed_vs_first": base / ms if ms == ms else None, "note": note}
            rows.append(row)
            shape_txt = " ".join(f"{k}{v}" for k, v in shape.items())
            print(f"{label:6s} {shape_txt:18s} {tag:38s} " + (f"{ms:9.2f} ms  {row['items_per_s']:12,.0f} /s  "
                  f"{peak:8.0f} MiB  {row['speed_vs_first']:5.2f}x" if ms == ms else note), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    ap.add_argument("--size", default="base", help="LM size: base, medium, large, small (default base)")
    ap.add_argument("--seq", default="1024,4096", help="LM sequence lengths, comma-separated (default 1024,4096)")
    ap.add_argument("--batch", type=int, default=8, help="LM sequences a step (default 8)")
    ap.add_argument("--vision", default="small_12_p16", help="vision size, as in tost_cab_{...} (default small_12_p16; none: no vision rows)")
    ap.add_argument("--images", type=int, default=64, help="images a vision step (default 64)")
    ap.add_argument("--compile", action="store_true", help="also time each model under torch.compile(fullgraph)")
    ap.add_argument("--checkpointing", action="store_true",
                    help="also time each model with activation checkpointing (model.set_checkpointing(True)): its "
                         "blocks' activations recomputed in the backward pass, for less peak memory")
    ap.add_argument("--packed", action="store_true",
                    help="also time the LMs on the step's tokens as documents of 1 to T tokens packed end to end")
    ap.add_argument("--out", default="benchmarks/results")
    smoke.add_flag(ap)
    args = ap.parse_args()
    global SMOKE
    SMOKE = smoke.check(args, "benchmarks/train_step.py")
    try:
        seqs = [int(t) for t in args.seq.split(",") if t]
    except ValueError:
        ap.error(f"--seq: expected comma-separated integers, got {args.seq!r}")
    dev = "cpu" if SMOKE else "cuda"
    size, vision, seqs, batch, images = (("tiny", "test", [16], 2, 2) if SMOKE else
                                         (args.size, args.vision, seqs, args.batch, args.images))
    name = "CPU smoke check" if SMOKE else torch.cuda.get_device_name()
    print(f"{name}: training steps, bf16 autocast, AdamW" + (" (smoke: fp32, nothing timed means anything)"
                                                                 if SMOKE else ""))
    rows = []
    gen = torch.Generator().manual_seed(0)
    for T in seqs:
        lm = {k: (v[0].format(size=size), v[1]) for k, v in LM.items()}
        run("LM", {"B": batch, "T": T}, lm, lambda: torch.randint(0, 256, (batch, T + 1), generator=gen).to(dev),
            batch * T, dev, args.compile, args.checkpointing, rows)
        if args.packed:
            packed = {k: v for k, v in lm.items() if v[1] == "triton"}
            run("LM packed", {"B": batch, "T": T}, packed, lambda: documents(gen, batch * T, T, dev), batch * T, dev,
                args.compile, args.checkpointing, rows)
            for row in rows:    # each packed row against the same model's [B, T] row: what packing costs or saves
                same = [r for r in rows if r["model"] == "LM" and r["shape"] == row["shape"] and
                        r["variant"] == row["variant"] and r["step_ms"] == r["step_ms"]]
                if row["model"] == "LM packed" and same and row["step_ms"] == row["step_ms"]:
                    row["speed_vs_unpacked"] = same[0]["step_ms"] / row["step_ms"]
                    print(f"  packed {row['variant']}: {row['speed_vs_unpacked']:.2f}x the [B, T] step's speed")
    if vision and vision != "none":
        config = models.create(f"tost_cab_{vision}").config
        px, classes = config["img_size"], config["num_classes"]
        run("vision", {"B": images, "px": px}, {k: (v[0].format(size=vision), v[1]) for k, v in VISION.items()},
            lambda: (torch.randn(images, 3, px, px, generator=gen).to(dev),
                     torch.randint(0, classes, (images,), generator=gen).to(dev)),
            images, dev, args.compile, args.checkpointing, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_step_{name.replace(' ', '_')}.json"
    path.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
