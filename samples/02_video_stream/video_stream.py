"""python samples/02_video_stream/video_stream.py BUNDLE [--frames N] [--source PATH]

One frame per step through a video stream bundle; per-frame predictions, FPS and latency.
"""
import argparse
import time

import numpy as np

from tost_edge.runtime import Session
from tost_edge.runtime.video import frames_from, synthetic_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--source", help="image folder, image file or video file (default: synthetic frames)")
    args = ap.parse_args()
    session = Session(args.bundle)
    size = session.bundle.manifest["frame_size"]
    frames = synthetic_frames(size, args.frames) if args.source is None else frames_from(args.source, size, args.frames)
    stream = session.open_stream()
    t0 = time.perf_counter()
    preds = [int(np.argmax(stream.step(f))) for f in frames]
    fps = len(preds) / (time.perf_counter() - t0)
    print(f"{len(preds)} frames at {fps:.0f} FPS, p50 {stream.stats.percentile_ms(50):.2f} ms/frame")
    print(f"predictions: {preds}")
    print(f"state: {session.bundle.state_bytes(stream.position)} bytes after {stream.position} frames")


if __name__ == "__main__":
    main()
