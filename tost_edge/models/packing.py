"""Documents packed end to end for next-token training without padding.

    batch = pack_documents([doc0, doc1, doc2])       # 1-D token ids of any lengths
    logits = model(batch.idx, cu_seqlens=batch.cu_seqlens)                       # [1, total, V]
    loss = F.cross_entropy(logits[0], batch.targets[0])

    for batch in pack_rows(documents, tokens=8192, max_len=model.config.block_size):   # a stream, rows of 8192
        ...

Each document runs from position 0 and attends within itself only (the models' cu_seqlens); its inputs are all its
tokens but the last and its targets all but the first, so no target crosses into the next document.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import torch


class PackedDocuments(NamedTuple):
    idx: torch.Tensor          # [1, total] int64: each document's tokens but its last
    targets: torch.Tensor      # [1, total] int64: each input's next token within its document
    cu_seqlens: torch.Tensor   # [N + 1] int32 offsets of the documents' inputs (0 first, total last)

    @property
    def lengths(self) -> torch.Tensor:
        """Inputs a document [N] (a document of one token has none)."""
        return self.cu_seqlens.diff()


def pack_documents(docs: Sequence[Union[torch.Tensor, Sequence[int]]], device=None) -> PackedDocuments:
    """docs: N token sequences (1-D integer tensors or lists of ints, any lengths, empty ones included) -> their
    next-token pairs packed end to end, on `device` (default: the first tensor's, else the CPU)."""
    if not len(docs):
        raise ValueError("docs: expected at least one document, got none")
    seqs = []
    for i, d in enumerate(docs):
        t = d if isinstance(d, torch.Tensor) else torch.tensor(list(d), dtype=torch.long)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"docs[{i}]: expected a 1-D integer tensor or a list of ints, got {t.dtype} shape "
                             f"{tuple(t.shape)}")
        seqs.append(t.long())
    if device is None:
        device = next((d.device for d in docs if isinstance(d, torch.Tensor)), torch.device("cpu"))
    lengths = torch.tensor([max(len(t) - 1, 0) for t in seqs])
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    idx = torch.cat([t[:-1].to(device) for t in seqs])
    targets = torch.cat([t[1:].to(device) for t in seqs])
    return PackedDocuments(idx[None], targets[None], cu.to(device))


def pack_rows(docs: Iterable[Union[torch.Tensor, Sequence[int]]], tokens: int, max_len: Optional[int] = None,
              device=None) -> Iterator[PackedDocuments]:
    """A stream of documents packed into rows of exactly `tokens` next-token pairs each (the last row may be shorter),
    so that every step has the same shape. A document longer than `max_len` pairs (a model's block_size) is cut into
    pieces of at most max_len, and one that does not fit the rest of a row is cut there and goes on in the next;
    each piece runs as a document of its own, from position 0."""
    if tokens < 1:
        raise ValueError(f"tokens: expected at least 1 next-token pair a row, got {tokens}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len: expected at least 1, got {max_len}")
    row: List[torch.Tensor] = []
    room = tokens
    for i, d in enumerate(docs):
        t = d if isinstance(d, torch.Tensor) else torch.tensor(list(d), dtype=torch.long)
        if t.dim() != 1:
            raise ValueError(f"docs[{i}]: expected a 1-D sequence of token ids, got shape {tuple(t.shape)}")
        start, pairs = 0, len(t) - 1
        while start < pairs:
            n = min(pairs - start, room, max_len or pairs)
            row.append(t[start:start + n + 1])          # n pairs: inputs start..start+n-1, targets one on
            start, room = start + n, room - n
            if room == 0:
                yield pack_documents(row, device)
                row, room = [], tokens
    if row:
        yield pack_documents(row, device)
