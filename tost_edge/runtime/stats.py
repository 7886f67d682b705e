"""Latency and throughput bookkeeping for streams and benchmarks."""
from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import List

import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


@dataclass
class StreamStats:
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    step_seconds: List[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.step_seconds, q) * 1e3) if self.step_seconds else float("nan")

    def summary(self, unit: str = "tokens") -> dict:
        decode = sum(self.step_seconds)
        return {
            "prefill_" + unit: self.prefill_tokens,
            "prefill_" + unit + "_per_s": self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else None,
            "decode_steps": len(self.step_seconds),
            "decode_" + unit + "_per_s": len(self.step_seconds) / decode if decode else None,
            "step_ms_p50": self.percentile_ms(50), "step_ms_p90": self.percentile_ms(90),
            "step_ms_p99": self.percentile_ms(99), "peak_rss_mib": peak_rss_mib(),
        }
