"""The [tokens, heads, channels] tiles of the TSSA kernels: offsets, statistics, the softmax over heads, and the
counters through which programs of one launch wait for each other."""
from __future__ import annotations

import triton
import triton.language as tl

NORM_EPS_SQ = tl.constexpr(1e-24)  # (F.normalize's eps 1e-12)^2, applied to the sum of squares
PI_EPS = tl.constexpr(1e-8)


@triton.jit
def _offsets(b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
             BN: tl.constexpr, c0: tl.constexpr = 0, W: tl.constexpr = 0):
    """Offsets and mask of tokens [n0, n0 + BN) of batch element b as a [BN, HP, BD] tile: channels [c0, c0 + W) of
    each head (W = 0: all D)."""
    n = n0 + tl.arange(0, BN)[:, None, None]
    h = tl.arange(0, HP)[None, :, None]
    d = tl.arange(0, BD)[None, None, :]
    return b * N * C + n * C + h * D + c0 + d, (n < N) & (h < H) & (d < (W if W > 0 else D))


@triton.jit
def _flat(D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, c0: tl.constexpr = 0,
          W: tl.constexpr = 0):
    """Offsets within a token row and mask of the HP * BD padded (head, channel) slots as one flat axis, [1, HP * BD]:
    channels [c0, c0 + W) of each head (W = 0: all D). A tile loaded through flat rows and reshaped to [tokens, HP,
    BD] takes the same layout under every Triton version (the coalescing pass orders a 3-D tile's two strided axes
    by a tie-break that changed between 3.6 and 3.9: lanes on the tokens, or on the heads)."""
    j = tl.arange(0, HP * BD)[None, :]
    h = j // BD
    d = j % BD
    return h * D + c0 + d, (h < H) & (d < (W if W > 0 else D))


@triton.jit
def _rows(b, n0, N, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
          BN: tl.constexpr, c0: tl.constexpr = 0, W: tl.constexpr = 0):
    """_offsets as flat [BN, HP * BD] rows (see _flat)."""
    n = n0 + tl.arange(0, BN)[:, None]
    col, m = _flat(D, H, HP, BD, c0, W)
    return b * N * C + n * C + col, (n < N) & m


@triton.jit
def _stat(b, H: tl.constexpr, D: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, c0: tl.constexpr = 0,
          W: tl.constexpr = 0):
    """Offsets of batch element b's [HP, BD] statistics in a [B, H, D] buffer (channels [c0, c0 + W) of each head;
    W = 0: all D), and of its [HP] ones in [B, H]."""
    h = tl.arange(0, HP)
    d = tl.arange(0, BD)[None, :]
    return b * H * D + h[:, None] * D + c0 + d, (h[:, None] < H) & (d < (W if W > 0 else D)), b * H + h, h < H


@triton.jit
def _softmax_heads(e, tv, H: tl.constexpr, HP: tl.constexpr):
    """energy [BN, HP], temp [HP] -> Pi [BN, HP]."""
    hc = tl.arange(0, HP)
    z = tl.where(hc[None, :] < H, e * tv[None, :], float("-inf"))
    z = z - tl.max(z, 1)[:, None]
    p = tl.exp(z)
    return p / tl.sum(p, 1)[:, None]


@triton.jit
def _wait(counter, target):
    """Spin until counter >= target (acquire: what was written before it was raised is visible after). Returns the
    count read back less `target`: 0 where the count stops at `target`, in a form the compiler cannot see through."""
    c = tl.atomic_add(counter, 0, sem="acquire")
    while c < target:
        c = tl.atomic_add(counter, 0, sem="acquire")
    return c - target


@triton.jit
def _signal(counter):
    tl.debug_barrier()                                   # every thread's writes of the item before the count
    tl.atomic_add(counter, 1, sem="release")


@triton.jit
def _d_softmax_heads(gpi, pi, tv, nh):
    """d loss / d Pi [BN, HP] -> d loss / d (temp * energy), d loss / d energy."""
    gz = pi * (gpi - tl.sum(pi * gpi, 1)[:, None])
    gz = tl.where(nh, gz, 0.0)
    return gz, gz * tv[None, :]


@triton.jit
def _grad_w_x(x, pi, Gs2, ge, invS2, dS2):
    """The terms of dw that take w, 2 w (Pi G / (P + eps) + d energy / S + dS), from the three per-channel factors
    given doubled (2 G / (P + eps), 2 / S, 2 dS: doubled once a program, not once an element): two fused
    multiply-adds and a product an element."""
    return x * (pi[:, :, None] * Gs2[None, :, :] + (ge[:, :, None] * invS2[None, :, :] + dS2[None, :, :]))


@triton.jit
def _grad_w_dy(g, pi, inv):
    """The term of dw that takes dy: Pi dy / (1 + dots), to subtract."""
    return pi[:, :, None] * inv[None, :, :] * g


@triton.jit
def _grad_w(x, g, pi, Gs2, inv, ge, invS2, dS2):
    """dw of a tile from its w and dy, the per-token Pi and d energy, and the per-channel statistics (doubled as
    _grad_w_x takes them)."""
    return _grad_w_x(x, pi, Gs2, ge, invS2, dS2) - _grad_w_dy(g, pi, inv)


@triton.jit
def _grad_w_anchored(x, g, pi, Gs2, inv, ge, invS2, dS2, ANCHOR: tl.constexpr):
    """_grad_w, or with ANCHOR every term a product with the tile itself, x Pi G' + x d e / S + x dS: two
    multiplications an element more, but where Triton 3.6 computed the [tokens, heads, channels] factor of _grad_w_x
    in another layout than w's and moved it to w's every trip (the passes' dw at 4 warps and tiles of up to 4096:
    3 tiles a trip), nothing moves."""
    if ANCHOR:
        return (x * pi[:, :, None]) * Gs2[None, :, :] + ((x * ge[:, :, None]) * invS2[None, :, :]
                                                          + x * dS2[None, :, :]) - _grad_w_dy(g, pi, inv)
    return _grad_w(x, g, pi, Gs2, inv, ge, invS2, dS2)


@triton.jit
def _arrive_and_wait(counter, count):
    """Count this program in and spin until all `count` programs of the group have arrived. Returns 0 (from _wait):
    offsets built from it after the wait are computed again there instead of being kept in registers across it."""
    _signal(counter)
    return _wait(counter, count)
