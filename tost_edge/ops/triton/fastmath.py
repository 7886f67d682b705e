"""Arithmetic helpers of the kernels: a fast reciprocal (causal TSSA walks and tiles), sums kept in fp64 or in pairs
of fp32 (causal TSSA backward) and a product kept apart from the sums that follow it. The interpreter cannot run PTX
and takes the plain operations."""
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
    the error-free sums of _suffix_add, which need the product as the value they add."""
    if PTX:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b


@triton.jit
def _sum_error(a, b, s):
    """(a + b) - s exactly, s being a + b rounded to fp32 (Knuth's TwoSum, any order of magnitude)."""
    bs = s - a
    return (a - (s - bs)) + (b - bs)


@triton.jit
def _suffix_add(hi, lo, v, PAIR: tl.constexpr, SUB: tl.constexpr = False):
    """(hi, lo) + v (- v where SUB), for sums that cancel (causal TSSA's d S): hi in fp64 (lo unused), or where PAIR
    an fp32 pair whose value is hi + lo (lo takes the rounding error of every hi + v, _sum_error, so the pair keeps
    ~48 bits)."""
    if PAIR:
        if SUB:
            v = -v
        s = hi + v
        return s, lo + _sum_error(hi, v, s)
    else:
        if SUB:
            return hi - v.to(tl.float64), lo
        else:
            return hi + v.to(tl.float64), lo


@triton.jit
def _suffix_split(x, PAIR: tl.constexpr):
    """An fp64 tensor as _suffix_add's (hi, lo)."""
    if PAIR:
        hi = x.to(tl.float32)
        return hi, (x - hi.to(tl.float64)).to(tl.float32)
    else:
        return x, tl.zeros(x.shape, dtype=tl.float32)


@triton.jit
def _suffix_value(hi, lo, PAIR: tl.constexpr, DTYPE: tl.constexpr):
    """The value of _suffix_add's (hi, lo) in DTYPE."""
    if PAIR:
        if DTYPE == tl.float64:
            return hi.to(tl.float64) + lo.to(tl.float64)
        else:
            return hi + lo
    else:
        return hi.to(DTYPE)


@triton.jit
def _suffix_term(a, b, PAIR: tl.constexpr):
    """a * b, a term of _suffix_add: for the pairs rounded as written (the error-free sum needs the value it adds,
    not a fused multiply-add's exact product)."""
    if PAIR:
        return _mul_rn(a, b)
    else:
        return a * b


@triton.jit
def _two_sum(a, ea, b, eb):
    """Combines two (value, error) fp32 pairs: tl.reduce's step for a sum in _suffix_add's pairs."""
    s = a + b
    return s, ea + eb + _sum_error(a, b, s)
