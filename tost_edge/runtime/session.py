"""Session (one opened bundle) and Stream (one sequence with its own state).

    session = Session("bundle/")                 # onnxruntime on CPU by default
    stream = session.open_stream()
    logits = stream.prefill(prompt_ids)          # [T, V]
    for token in stream.generate(prompt_ids, max_new_tokens=32, temperature=0.8, top_k=50, seed=0):
        ...
"""
from __future__ import annotations

import time
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from .backends import make_backend
from .bundle import Bundle
from .sampling import sample
from .snapshot import SnapshotError, read_snapshot, write_snapshot
from .stats import StreamStats


class PositionRangeError(ValueError):
    """The stream reached the end of the model's learned position range (block_size)."""


class Session:
    def __init__(self, bundle_dir, backend: str = "onnxruntime", providers: Optional[List[str]] = None):
        self.bundle = Bundle.load(bundle_dir)
        self.backend = make_backend(self.bundle, backend, providers)
        self.data_input = self.bundle.data_input

    # -- streams ------------------------------------------------------------------------------------
    def open_stream(self) -> "Stream":
        return Stream(self)

    def restore_stream(self, path) -> "Stream":
        stream = Stream(self)
        stream.load_state(path)
        return stream

    def scheduler(self, max_batch: int = 64):
        from .scheduler import Scheduler
        return Scheduler(self, max_batch)

    # -- graph calls -------------------------------------------------------------------------------
    def _state_feeds(self, states: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        if len(states) == 1:  # one stream: hand its arrays over as they are (no copy of a KV cache per step)
            return {s.input: states[0][s.name] for s in self.bundle.state}
        return {s.input: np.concatenate([st[s.name] for st in states], 0) for s in self.bundle.state}

    def _split_state(self, out: Dict[str, np.ndarray], n: int) -> List[Dict[str, np.ndarray]]:
        return [{s.name: out[s.output][i:i + 1] for s in self.bundle.state} for i in range(n)]

    def check_range(self, pos: int, n: int) -> None:
        bs = self.bundle.block_size
        if bs is not None and pos + n > bs:
            raise PositionRangeError(
                f"stream: position {pos + n} is beyond the model's position range (block_size={bs}); "
                "start a new stream, or export a model made with unbounded=True for endless streams")

    def step_batch(self, streams: Sequence["Stream"], inputs) -> np.ndarray:
        """One step for many streams in one graph call. inputs: one token id (or frame) per stream.
        Returns logits [N, V]; each stream's state and position advance."""
        if not streams:
            return np.zeros((0, self.bundle.vocab_size), np.float32)
        if self.bundle.grows and len({s.position for s in streams}) > 1:
            raise ValueError("streams: a KV-cache model batches only streams at the same position; "
                             f"got positions {sorted({s.position for s in streams})}")
        for s in streams:
            self.check_range(s.position, 1)
        feeds = {self.data_input: np.stack([np.asarray(x) for x in inputs], 0),
                 "pos": np.array([s.position for s in streams], np.int64), **self._state_feeds([s.state for s in streams])}
        out = self.backend.run("step", feeds)
        for s, st in zip(streams, self._split_state(out, len(streams))):
            s.state, s.position = st, s.position + 1
        return out["logits"].astype(np.float32)


class Stream:
    """One sequence: its fp32 state, its position, its statistics."""

    def __init__(self, session: Session):
        self.session = session
        self.state = {s.name: s.empty(1) for s in session.bundle.state}
        self.position = 0
        self.stats = StreamStats()

    def _data(self, x, step: bool) -> np.ndarray:
        b = self.session.bundle
        if b.kind == "video":
            s = b.manifest["frame_size"]
            arr = np.asarray(x, np.float32)
            want = (3, s, s) if step else (None, 3, s, s)
            if arr.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, arr.shape)):
                raise ValueError(f"{'frame' if step else 'frames'}: expected shape "
                                 f"{'[3, %d, %d]' % (s, s) if step else '[T, 3, %d, %d]' % (s, s)}, got {arr.shape}")
            return arr
        arr = np.asarray(x, np.int64)
        if arr.ndim != (0 if step else 1):
            raise ValueError(f"{'token' if step else 'tokens'}: expected {'one token id' if step else 'token ids [T]'}, "
                             f"got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= b.vocab_size):
            raise ValueError(f"tokens: expected ids in [0, {b.vocab_size}), got values {arr.min()}..{arr.max()}")
        return arr

    def prefill(self, tokens) -> np.ndarray:
        """tokens: [T] ids (frames [T, 3, S, S] for video) -> logits [T, V]; runs in chunks of the bundle's
        prefill size, handing the state on."""
        data = self._data(tokens, step=False)
        sess = self.session
        sess.check_range(self.position, len(data))
        chunk = sess.bundle.prefill_chunk
        outs = []
        t0 = time.perf_counter()
        for i in range(0, len(data), chunk):
            block = data[i:i + chunk]
            feeds = {sess.data_input: block[None], "pos": np.array([self.position], np.int64),
                     **sess._state_feeds([self.state])}
            out = sess.backend.run("prefill", feeds)
            self.state = sess._split_state(out, 1)[0]
            self.position += len(block)
            outs.append(out["logits"][0].astype(np.float32))
        self.stats.prefill_seconds += time.perf_counter() - t0
        self.stats.prefill_tokens += len(data)
        return np.concatenate(outs, 0) if outs else np.zeros((0, sess.bundle.vocab_size), np.float32)

    def step(self, token) -> np.ndarray:
        """One token id (or frame [3, S, S]) -> logits [V]."""
        data = self._data(token, step=True)
        t0 = time.perf_counter()
        logits = self.session.step_batch([self], [data])[0]
        self.stats.step_seconds.append(time.perf_counter() - t0)
        return logits

    def generate(self, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None) -> Iterator[int]:
        """Prefill the prompt, then yield max_new_tokens sampled tokens (temperature 0: greedy)."""
        rng = np.random.default_rng(seed)
        logits = self.prefill(prompt)[-1]
        for i in range(max_new_tokens):
            tok = sample(logits, rng, temperature, top_k, top_p)
            yield tok
            if i + 1 < max_new_tokens:
                logits = self.step(tok)

    # -- snapshots ----------------------------------------------------------------------------------
    def save_state(self, path) -> None:
        b = self.session.bundle
        write_snapshot(path, {"model": b.model_name, "config_hash": b.config_hash, "dtype": b.manifest["dtype"],
                              "position": self.position}, self.state)

    def load_state(self, path) -> None:
        """Replace this stream's state by a snapshot; on any error the stream is left untouched."""
        meta, tensors = read_snapshot(path)
        b = self.session.bundle
        if meta.get("config_hash") != b.config_hash:
            raise SnapshotError(f"{path}: snapshot of model {meta.get('model')!r} (config {meta.get('config_hash')}), "
                                f"expected {b.model_name!r} (config {b.config_hash})")
        want = {s.name: s for s in b.state}
        if set(tensors) != set(want):
            raise SnapshotError(f"{path}: state tensors {sorted(tensors)}, expected {sorted(want)}")
        for name, arr in tensors.items():
            s = want[name]
            fixed = [d for d in s.shape[1:]]
            ok = arr.dtype == np.dtype(s.dtype) and arr.ndim == len(s.shape) and arr.shape[0] == 1 and all(
                d == "past" or int(d) == a for d, a in zip(fixed, arr.shape[1:]))
            if not ok:
                raise SnapshotError(f"{path}: {name} is {arr.dtype} {arr.shape}, expected {s.dtype} {s.shape}")
        self.state = tensors
        self.position = int(meta["position"])
