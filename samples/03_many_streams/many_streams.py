"""python samples/03_many_streams/many_streams.py BUNDLE [--streams N]

Batched decoding of many streams with the scheduler, checked against solo runs, plus a state snapshot round trip.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from tost_edge.runtime import Session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--streams", type=int, default=16)
    args = ap.parse_args()
    session = Session(args.bundle)
    rng = np.random.default_rng(0)
    sched = session.scheduler(max_batch=args.streams)
    reqs = [sched.submit(rng.integers(0, 256, 3), max_new_tokens=8, temperature=0.7, top_k=20, seed=i)
            for i in range(args.streams)]
    ticks = 0
    while sched.busy:
        sched.tick()
        ticks += 1
    same = all(r.tokens == list(session.open_stream().generate(r.prompt, 8, 0.7, 20, None, r.id)) for r in reqs)
    print(f"{args.streams} streams decoded in {ticks} ticks; each equal to its solo run: {same}")
    stream = reqs[0].stream
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.snap"
        stream.save_state(path)
        copy = session.restore_stream(path)
        a, b = stream.step(5), copy.step(5)
        print(f"snapshot: {path.stat().st_size} bytes at position {copy.position - 1}; restored copy matches: "
              f"{bool(np.array_equal(a, b))}")


if __name__ == "__main__":
    main()
