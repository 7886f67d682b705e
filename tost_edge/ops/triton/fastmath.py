"""PTX helpers of the kernels: a fast reciprocal (causal TSSA walks and tiles) and a product kept apart from the sums
that follow it (causal TSSA backward). The interpreter cannot run PTX and takes the plain operations."""
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


@triton.jit
def _mul_rn(a, b):
    """a * b rounded to fp32 as written (mul.rn: never contracted into a fused multiply-add with a later sum), for
    the error-free sums of causal_tssa._suffix_add, which need the product as the value they add."""
    if PTX:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b
