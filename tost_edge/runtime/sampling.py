"""Next-token sampling in numpy: greedy, temperature, top-k, top-p."""
from __future__ import annotations

from typing import Optional

import numpy as np


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None) -> int:
    """logits: [V]. temperature 0 picks the argmax."""
    logits = np.asarray(logits, np.float64)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p   # the smallest prefix whose mass reaches top_p
        mask = np.zeros_like(p, bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
