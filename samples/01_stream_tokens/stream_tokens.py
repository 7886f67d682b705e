"""python samples/01_stream_tokens/stream_tokens.py BUNDLE [--tokens N] [--show-state]

Greedy generation from a stream bundle with the torch-free runtime, printing the state size as it goes.
"""
import argparse

from tost_edge.runtime import Session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--show-state", action="store_true")
    args = ap.parse_args()
    session = Session(args.bundle)
    stream = session.open_stream()
    prompt = [1, 2, 3, 4]
    out = list(stream.generate(prompt, max_new_tokens=args.tokens, temperature=0))
    print(f"generated {len(out)} tokens: {out}")
    print(f"position {stream.position}, state {session.bundle.state_bytes(stream.position)} bytes")
    if args.show_state:
        for name, t in stream.state.items():
            print(f"  {name:16s} {t.dtype} {t.shape}")
    s = stream.stats.summary()
    print(f"decode: {s['decode_tokens_per_s']:.0f} tokens/s, p50 {s['step_ms_p50']:.3f} ms")


if __name__ == "__main__":
    main()
