"""Documents packed end to end for next-token training without padding.

    batch = pack_documents([doc0, doc1, doc2])       # 1-D token ids of any lengths
    logits = model(batch.idx, cu_seqlens=batch.cu_seqlens)                       # [1, total, V]
    loss = F.cross_entropy(logits[0], batch.targets[0])

Each document runs from position 0 and attends within itself only (the models' cu_seqlens); its inputs are all its
tokens but the last and its targets all but the first, so no target crosses into the next document.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

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
