"""PTX helpers of the kernels: a fast reciprocal (causal TSSA walks and tiles). The interpreter cannot run PTX and
takes the plain operations."""
from __future__ import annotations

import triton
import triton.language as tl

from .utils import interpreting

PTX = tl.constexpr(not interpreting())


@triton.jit
def _rcp(x):
    """1/x as one MUFU.RCP (rcp.approx.ftz: relative error below 2^-23; the divisors here are >= 1e-12, never
    subnormal) instead of div.full's eight instructions: the causal kernels divide twice per element."""
    if PTX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 / x
