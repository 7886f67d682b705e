"""PTX helpers of the kernels: a fast reciprocal (causal TSSA walks and tiles) and an opaque widening to fp32
(resident TSSA tiles). The interpreter cannot run PTX and takes the plain operations."""
from __future__ import annotations

import triton
import triton.language as tl

from .utils import interpreting

PTX = tl.constexpr(not interpreting())   # the interpreter cannot run PTX: it takes the plain operations


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
def _widen(x, salt):
    """x (fp32 / fp16 / bf16) -> fp32, as an instruction that differs for each value of `salt` (an int32 the compiler
    cannot see through, e.g. 0 read back from memory): a kernel that keeps a tile for several uses widens it at each
    use with another salt, so what stays in registers is the packed 16-bit tile (two elements a register) rather
    than its fp32 copy, and the compiler may still schedule each widening next to its use."""
    if PTX and x.dtype == tl.bfloat16:      # bf16 is the top half of an fp32
        return tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xFFFF0000; }", "=r,=r,r,r,r",
                                         [x, tl.zeros_like(x.to(tl.int32)) + salt], dtype=tl.float32, is_pure=True,
                                         pack=2)
    elif PTX and x.dtype == tl.float16:
        return tl.inline_asm_elementwise("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.f32.f16 $0, lo; "
                                         "cvt.f32.f16 $1, hi; }", "=r,=r,r,r,r",
                                         [x, tl.zeros_like(x.to(tl.int32)) + salt], dtype=tl.float32, is_pure=True,
                                         pack=2)
    else:
        return x.to(tl.float32)
