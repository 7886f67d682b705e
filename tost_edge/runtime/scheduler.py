"""Multi-stream batching: streams join and leave at any time; each tick prefills the new prompts together (all of
them, or a token budget's worth of pieces) and runs one batched step graph call for every stream that has a token
to decode (KV-cache models batch only streams at equal positions)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .sampling import sample


@dataclass
class Request:
    id: int
    stream: object
    prompt: np.ndarray
    max_new_tokens: int
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    rng: np.random.Generator = None
    tokens: List[int] = field(default_factory=list)
    logits: Optional[np.ndarray] = None
    done: bool = False
    fed: int = 0            # prompt tokens prefilled so far


class Scheduler:
    def __init__(self, session, max_batch: int = 64, max_prefill_tokens: Optional[int] = None):
        """max_batch: requests prefilling or decoding at once (more wait in `pending`). max_prefill_tokens: prompt
        tokens prefilled a tick over all requests, at most a prefill chunk each, first come first served (None:
        every new prompt whole when admitted). A budget bounds a tick's time, so a long prompt does not hold up the
        other streams' steps: it goes in pieces over several ticks, its first token sampled after its last piece."""
        if max_batch < 1:
            raise ValueError(f"max_batch: expected a positive int, got {max_batch}")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens: expected a positive int or None, got {max_prefill_tokens}")
        self.session, self.max_batch, self.max_prefill_tokens = session, max_batch, max_prefill_tokens
        self.pending: List[Request] = []
        self.prefilling: List[Request] = []
        self.active: List[Request] = []
        self._ids = itertools.count()

    @property
    def busy(self) -> bool:
        """Whether any submitted request is not done yet."""
        return bool(self.pending or self.prefilling or self.active)

    def submit(self, prompt, max_new_tokens: int, stream=None, temperature: float = 0.0, top_k=None, top_p=None,
               seed: Optional[int] = None) -> Request:
        """Queue a generation; it joins the batch at the next tick. The prompt is checked here, so a bad one is
        refused before it is queued."""
        stream = stream or self.session.open_stream()
        prompt = stream._data(prompt)
        if not len(prompt):
            raise ValueError("prompt: expected at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected at least 1, got {max_new_tokens}")
        self.session.check_range(stream.position, len(prompt))
        req = Request(next(self._ids), stream, prompt, max_new_tokens, temperature, top_k, top_p,
                      np.random.default_rng(seed))
        self.pending.append(req)
        return req

    def cancel(self, req: Request) -> None:
        req.done = True
        self.pending = [r for r in self.pending if r is not req]
        self.prefilling = [r for r in self.prefilling if r is not req]
        self.active = [r for r in self.active if r is not req]

    def _emit(self, req: Request) -> Tuple[int, int]:
        tok = sample(req.logits, req.rng, req.temperature, req.top_k, req.top_p)
        req.tokens.append(tok)
        if len(req.tokens) >= req.max_new_tokens:
            req.done = True
        return req.id, tok

    def tick(self) -> List[Tuple[int, int]]:
        """Admit new requests and prefill their prompts (or the next pieces of them, under max_prefill_tokens)
        together, then one batched decode step. Returns the (request id, token) pairs produced."""
        events = []
        while self.pending and len(self.active) + len(self.prefilling) < self.max_batch:
            self.prefilling.append(self.pending.pop(0))
        pieces = self._pieces()
        if pieces:
            logits = self.session.prefill_batch([r.stream for r, _ in pieces], [p for _, p in pieces])
            for (req, piece), lg in zip(pieces, logits):
                req.fed += len(piece)
                if req.fed == len(req.prompt):      # the whole prompt is in: its first token
                    req.logits = lg[-1]
                    events.append(self._emit(req))
                    if not req.done:
                        self.active.append(req)
            self.prefilling = [r for r in self.prefilling if r.fed < len(r.prompt)]
        decoding = [r for r in self.active if not r.done and r.tokens and len(r.tokens) < r.max_new_tokens
                    and r.id not in {e[0] for e in events}]
        groups: Dict[int, List[Request]] = {}
        for r in decoding:
            key = r.stream.position if self.session.bundle.grows else 0
            groups.setdefault(key, []).append(r)
        for group in groups.values():
            logits = self.session.step_batch([r.stream for r in group], [r.tokens[-1] for r in group])
            for r, lg in zip(group, logits):
                r.logits = lg
                events.append(self._emit(r))
        self.active = [r for r in self.active if not r.done]
        return events

    def _pieces(self) -> List[Tuple[Request, np.ndarray]]:
        """(request, the prompt tokens it prefills this tick), first come first served within the budget."""
        budget, chunk, out = self.max_prefill_tokens, self.session.bundle.prefill_chunk, []
        for req in self.prefilling:
            n = len(req.prompt) - req.fed
            if budget is not None:
                n = min(n, chunk, budget)
                budget -= n
            if n <= 0:
                break
            out.append((req, req.prompt[req.fed:req.fed + n]))
        return out

    def run(self) -> Iterator[Tuple[int, int]]:
        """Tick until every submitted request is done, yielding (request id, token)."""
        while self.busy:
            yield from self.tick()
