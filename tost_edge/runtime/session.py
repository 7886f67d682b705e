"""Session (one opened bundle) and Stream (one sequence with its own state).

    session = Session("bundle/")                 # onnxruntime on CPU by default
    stream = session.open_stream()
    logits = stream.prefill(prompt_ids)          # [T, V]
    for token in stream.generate(prompt_ids, max_new_tokens=32, temperature=0.8, top_k=50, seed=0):
        ...
"""
from __future__ import annotations

import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .backends import make_backend
from .bundle import Bundle
from .sampling import sample
from .snapshot import SnapshotError, read_snapshot, write_snapshot
from .stats import StreamStats


class PositionRangeError(ValueError):
    """The stream reached the end of the model's learned position range (block_size)."""


class Session:
    def __init__(self, bundle_dir, backend: str = "onnxruntime", providers: Optional[List[str]] = None,
                 cuda_graphs: bool = True):
        """backend: "onnxruntime" (providers: its execution providers) or "tensorrt" (engines built by `tost-edge
        build`; cuda_graphs: fixed-shape steps replayed from CUDA graphs)."""
        self.bundle = Bundle.load(bundle_dir)
        self.backend = make_backend(self.bundle, backend, providers, cuda_graphs)
        self.data_input = self.bundle.data_input

    # -- streams ------------------------------------------------------------------------------------
    def open_stream(self) -> "Stream":
        return Stream(self)

    def restore_stream(self, path) -> "Stream":
        stream = Stream(self)
        stream.load_state(path)
        return stream

    def scheduler(self, max_batch: int = 64, max_prefill_tokens: Optional[int] = None):
        """A Scheduler of many streams on this session (scheduler.py)."""
        from .scheduler import Scheduler
        return Scheduler(self, max_batch, max_prefill_tokens)

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

    @property
    def max_batch(self) -> Optional[int]:
        """The most streams one graph call takes (a TensorRT engine's optimisation profile); None: no limit."""
        return getattr(self.backend, "max_batch", None)

    def _parts(self, items: Sequence) -> List[Sequence]:
        n = self.max_batch or len(items) or 1
        return [items[i:i + n] for i in range(0, len(items), n)]

    def step_batch(self, streams: Sequence["Stream"], inputs) -> np.ndarray:
        """One step for many streams (in calls of at most max_batch). inputs: one token id (or frame) per stream.
        Returns logits [N, V]; each stream's state and position advance."""
        if not streams:
            return np.zeros((0, self.bundle.vocab_size), np.float32)
        if len(inputs) != len(streams):
            raise ValueError(f"inputs: expected one per stream ({len(streams)}), got {len(inputs)}")
        _distinct(streams)
        if self.bundle.grows and len({s.position for s in streams}) > 1:
            raise ValueError("streams: a KV-cache model batches only streams at the same position; "
                             f"got positions {sorted({s.position for s in streams})}")
        data = self._step_inputs(inputs)
        for s in streams:
            self.check_range(s.position, 1)
        logits = []
        for part in self._parts(range(len(streams))):
            group = [streams[i] for i in part]
            feeds = {self.data_input: data[part.start:part.stop],
                     "pos": np.array([s.position for s in group], np.int64),
                     **self._state_feeds([s.state for s in group])}
            out = self.backend.run("step", feeds)
            for s, st in zip(group, self._split_state(out, len(group))):
                s.state, s.position = st, s.position + 1
            logits.append(out["logits"].astype(np.float32))
        return np.concatenate(logits, 0)

    def _step_inputs(self, inputs) -> np.ndarray:
        """The streams' step inputs stacked and checked: token ids [N] int64, or frames [N, 3, S, S] float32."""
        b = self.bundle
        where = (lambda i: f"inputs[{i}]: ") if len(inputs) > 1 else (lambda i: "")
        if b.kind == "video":
            s = b.manifest["frame_size"]
            frames = [np.asarray(x, np.float32) for x in inputs]
            for i, f in enumerate(frames):
                if f.shape != (3, s, s):
                    raise ValueError(f"{where(i)}frame: expected shape [3, {s}, {s}], got {f.shape}")
            return np.stack(frames, 0)
        ids = np.asarray(inputs, np.int64)
        if ids.ndim != 1:
            raise ValueError(f"inputs: expected one token id per stream, got shape {ids.shape}")
        bad = (ids < 0) | (ids >= b.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where(i)}token: expected an id in [0, {b.vocab_size}), got {ids[i]}")
        return ids

    def prefill_batch(self, streams: Sequence["Stream"], prompts) -> List[np.ndarray]:
        """Prefill many streams together: prompts[i] (ids [T_i]; frames [T_i, 3, S, S] for video) -> logits
        [T_i, V] each. Each prompt runs in blocks of at most the bundle's prefill chunk, its state handed on, and
        the streams share graph calls as prefill_plan lays them out."""
        if len(prompts) != len(streams):
            raise ValueError(f"prompts: expected one per stream ({len(streams)}), got {len(prompts)}")
        _distinct(streams)
        data = []
        for i, (s, p) in enumerate(zip(streams, prompts)):
            try:
                data.append(s._data(p))
            except ValueError as e:
                raise ValueError(f"prompts[{i}]: {e}" if len(streams) > 1 else str(e)) from None
        for s, d in zip(streams, data):
            self.check_range(s.position, len(d))
        outs: List[List[np.ndarray]] = [[] for _ in streams]
        seconds, done = [0.0] * len(streams), [0] * len(streams)
        for n, members in prefill_plan([len(d) for d in data], self.bundle.prefill_chunk):
            groups: Dict[int, List[int]] = {}
            for i in members:  # a KV cache batches only streams at one position
                groups.setdefault(streams[i].position if self.bundle.grows else 0, []).append(i)
            for part in (p for g in groups.values() for p in self._parts(g)):
                t0 = time.perf_counter()
                feeds = {self.data_input: np.stack([data[i][done[i]:done[i] + n] for i in part], 0),
                         "pos": np.array([streams[i].position for i in part], np.int64),
                         **self._state_feeds([streams[i].state for i in part])}
                out = self.backend.run("prefill", feeds)
                for j, (i, st) in enumerate(zip(part, self._split_state(out, len(part)))):
                    streams[i].state, streams[i].position = st, streams[i].position + n
                    outs[i].append(out["logits"][j].astype(np.float32))
                    done[i] += n
                for i in part:
                    seconds[i] += time.perf_counter() - t0
        empty = np.zeros((0, self.bundle.vocab_size), np.float32)
        for s, d, t in zip(streams, data, seconds):
            s.stats.prefill_seconds += t
            s.stats.prefill_tokens += len(d)
        return [np.concatenate(o, 0) if o else empty for o in outs]


def prefill_plan(lengths: Sequence[int], chunk: int) -> List[Tuple[int, List[int]]]:
    """Graph calls that prefill prompts of these lengths together: [(tokens a stream, streams), ...] in order.

    Full chunks first, every stream with one left in each call. The shorter tails then go by equal length (one
    call per distinct length) or, where that takes fewer calls, by the bits of their lengths: a call of 32 tokens
    for every tail with 32 in its length, then 16, ... (at most log2(chunk) + 1 calls, whatever the mix)."""
    left, calls = [int(n) for n in lengths], []
    while any(n >= chunk for n in left):
        members = [i for i, n in enumerate(left) if n >= chunk]
        calls.append((chunk, members))
        for i in members:
            left[i] -= chunk
    by_length: Dict[int, List[int]] = {}
    for i, n in enumerate(left):
        if n:
            by_length.setdefault(n, []).append(i)
    bits = [1 << b for b in reversed(range(max(left).bit_length()))] if by_length else []
    by_bit = [(b, [i for i, n in enumerate(left) if n & b]) for b in bits]
    by_bit = [(b, m) for b, m in by_bit if m]
    return calls + (by_bit if len(by_bit) < len(by_length) else sorted(by_length.items(), reverse=True))


def _distinct(streams: Sequence["Stream"]) -> None:
    ids = [id(s) for s in streams]
    if len(set(ids)) != len(ids):
        raise ValueError("streams: a stream appears twice in one batch (each call advances a stream once)")


class Stream:
    """One sequence: its fp32 state, its position, its statistics."""

    def __init__(self, session: Session):
        self.session = session
        self.state = {s.name: s.empty(1) for s in session.bundle.state}
        self.position = 0
        self.stats = StreamStats()

    def _data(self, x) -> np.ndarray:
        """A prompt checked: token ids [T] int64, or frames [T, 3, S, S] float32 (a step's: Session._step_inputs)."""
        b = self.session.bundle
        if b.kind == "video":
            s = b.manifest["frame_size"]
            arr = np.asarray(x, np.float32)
            if arr.ndim != 4 or arr.shape[1:] != (3, s, s):
                raise ValueError(f"frames: expected shape [T, 3, {s}, {s}], got {arr.shape}")
            return arr
        arr = np.asarray(x, np.int64)
        if arr.ndim != 1:
            raise ValueError(f"tokens: expected token ids [T], got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= b.vocab_size):
            raise ValueError(f"tokens: expected ids in [0, {b.vocab_size}), got values {arr.min()}..{arr.max()}")
        return arr

    def prefill(self, tokens) -> np.ndarray:
        """tokens: [T] ids (frames [T, 3, S, S] for video) -> logits [T, V]; runs in chunks of the bundle's
        prefill size, handing the state on."""
        return self.session.prefill_batch([self], [tokens])[0]

    def step(self, token) -> np.ndarray:
        """One token id (or frame [3, S, S]) -> logits [V]."""
        t0 = time.perf_counter()
        logits = self.session.step_batch([self], [token])[0]
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
