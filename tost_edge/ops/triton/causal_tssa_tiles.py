"""Causal TSSA slice walks over tiles of BT tokens (TILED, BWD_TILED in causal_tssa.py).

The token walks in causal_tssa.py carry the running sums from one token row to the next, so each token waits for
the previous one's reductions (sum over channels, max and sum over heads: several block-wide barriers per token).
Here BT tokens are one [BT, HP, BD] tile: the running sums inside the tile are cumulative sums over its token axis,
every reduction covers the whole tile at once, and only the tile totals are carried to the next tile. Per-head
values (energy, Pi, their gradients) are [BT, HP, 1] tensors in the tile's own layout, so nothing moves between
layouts inside the loops. Same arguments and results as the walks they replace.

Backward: the gradients flowing into A, P and S at token t (from t and every later token) are the value after the
tile plus a reverse cumulative sum inside it, never a total minus what was passed inside the tile; the value
carried between tiles for S stays fp64, or an fp32 pair where the GPU's fp64 is slow (see causal_tssa.py's docstring;
a tile's total then summed error-free, fastmath._two_sum).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .fastmath import _rcp, _suffix_add, _suffix_split, _suffix_term, _suffix_value, _two_sum
from .tssa_tile import _flat

# tl.cumsum on per-head [BT, HP, 1] values: Triton 3.9 compiles it; 3.6 fails to wherever their layout lays more
# threads along an axis than it holds (the few tokens of a _heads load, the size-1 channel axis of a value reduced
# from the tile), so before 3.9 (3.7 and 3.8 unverified) they are summed under a triangular mask instead, which
# compiles everywhere but keeps more registers live (sm_90, forward tiles of 8 at H12: 228 against 168 under 3.9).
SCAN_HEADS = tl.constexpr(tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 9))


def p_channels(warps: int) -> bool:
    """Whether the tiled output loop carries P per channel, Pi broadcast over the tile and its cumulative sum an
    in-thread scan like A's (one add and multiply an element more), rather than per head. Where per-head values
    cannot be scanned (SCAN_HEADS off) their triangular sums move them between layouts, which at 4 warps or more
    costs barriers and registers: sm_90, Triton 3.6, H12 tiles of 8 at 4 warps, 2 barriers a tile against 14 and
    164 registers against 188 (an SM holds 3 programs, not 2); H20 at 8 warps likewise. At 1 and 2 warps the compiler
    lays the per-channel form out worse (2 warps: 20 barriers against 12), so those keep per-head P
    (`compile_report.py --layouts`)."""
    return not SCAN_HEADS and warps >= 4


@triton.jit
def _tile_at(b, t, vt, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr):
    """Offsets and mask of tokens t [BT] of sequence b as flat [BT, HP * BD] rows (tssa_tile._flat: every Triton
    version then keeps all BT tokens of a thread's slots in that thread)."""
    col, m = _flat(D, H, HP, BD)
    return (b * T + t)[:, None] * C + col, m & vt[:, None]


@triton.jit
def _tile_rows(ptr, b, t, vt, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
               BD: tl.constexpr):
    """Tokens t [BT] of sequence b as [BT, HP, BD] fp32, zeros where vt is false."""
    off, m = _tile_at(b, t, vt, T, C, D, H, HP, BD)
    x = tl.load(ptr + off, mask=m, other=0.0).to(tl.float32)
    return tl.reshape(x, (t.shape[0], HP, BD))


@triton.jit
def _tile_store(ptr, v, b, t, vt, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                BD: tl.constexpr):
    """Stores v [BT, HP, BD] as tokens t of sequence b (in ptr's dtype)."""
    off, m = _tile_at(b, t, vt, T, C, D, H, HP, BD)
    tl.store(ptr + off, tl.reshape(v, (t.shape[0], HP * BD)).to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _heads(ptr, b, t, vt, T, H: tl.constexpr, HP: tl.constexpr):
    """Per-head values [B, T, H] of tokens t as [BT, HP, 1], 0 where not valid. Loaded as [BT, HP] and expanded: a
    [BT, HP, 1] load takes a layout that splits the tokens across lanes, and the compiler then moves the whole tile
    into it (tokens no longer in each thread) rather than convert this small tensor."""
    hc = tl.arange(0, HP)[None, :]
    return tl.load(ptr + (b * T + t)[:, None] * H + hc, mask=(hc < H) & vt[:, None], other=0.0)[:, :, None]


@triton.jit
def _before(s, REVERSE: tl.constexpr, STRICT: tl.constexpr):
    """[t, u]: token u of a tile counts in token t's cumulative sum (u <= t; u >= t where REVERSE; not t where
    STRICT)."""
    if REVERSE:
        take = (s[None, :] > s[:, None]) if STRICT else (s[None, :] >= s[:, None])
    else:
        take = (s[None, :] < s[:, None]) if STRICT else (s[None, :] <= s[:, None])
    return take


@triton.jit
def _csum(x, REVERSE: tl.constexpr = False, STRICT: tl.constexpr = False):
    """Cumulative sum over the tokens (axis 0) of a [BT, heads, channels] tile whose tokens each thread holds, from
    the end where REVERSE, each token's own term left out where STRICT: token by token, each taken out of the tile by
    a sum over the axis its thread holds, so the tile keeps its layout. (Triton 3.6, sm_90, tiles of 2 / 4 tokens:
    tl.cumsum takes 8 / 16 shuffles a thread and its reverse form 168 / 336; a sum under a triangular mask,
    _csum_masked, none, but it moves the whole tile into a [BT, BT, heads, channels] layout and back through shared
    memory. With this form CHUNKED's d Pi walk, tiles of 2, went 454 → 424 SASS a trip and 124 → 95 registers, and
    the tiled backward's third stage (BWD_TILED, bf16 H12, tiles of 4) 1961 → 1405 SASS a tile from the reverse
    tl.cumsum.)"""
    s = tl.arange(0, x.shape[0])[:, None, None]
    out = tl.zeros_like(x)
    for u in tl.static_range(x.shape[0]):
        xu = tl.sum(tl.where(s == u, x, 0.0), 0, keep_dims=True)                      # token u, [1, G, BD]
        if REVERSE:
            take = (s < u) if STRICT else (s <= u)
        else:
            take = (s > u) if STRICT else (s >= u)
        out += tl.where(take, xu, 0.0)
    return out


@triton.jit
def _csum_masked(x, REVERSE: tl.constexpr = False, STRICT: tl.constexpr = False):
    """_csum as a sum under a triangular mask [t, u] (see _csum). CHUNKED's dw walk keeps it for its d A: there the
    token-by-token form took 168 → 194 registers a thread (sm_90, tiles of 2; Triton 3.6), two warps an SM fewer."""
    take = _before(tl.arange(0, x.shape[0]), REVERSE, STRICT)                            # [t, u]
    return tl.sum(tl.where(take[:, :, None, None], x[None, :, :, :], 0.0), 1)


@triton.jit
def _heads_cumsum(v, REVERSE: tl.constexpr = False):
    """Cumulative sum over the tokens (inclusive; from the end where REVERSE) of per-head values v [BT, HP, 1]: a scan,
    or where SCAN_HEADS is off a sum under a triangular mask ([BT, BT, HP]: a few registers)."""
    if SCAN_HEADS:
        return tl.cumsum(v, 0, reverse=REVERSE)
    s = tl.arange(0, v.shape[0])
    if REVERSE:
        take = s[:, None] <= s[None, :]                                   # [t, s]: s >= t
    else:
        take = s[:, None] >= s[None, :]                                   # [t, s]: s <= t
    return tl.sum(tl.where(take[:, :, None], tl.sum(v, 2)[None, :, :], 0.0), 1)[:, :, None]


@triton.jit
def _store_heads(ptr, v, b, t, vt, T, H: tl.constexpr, HP: tl.constexpr):
    """Stores v [BT, HP, 1] into per-head values [B, T, H] (as [BT, HP], see _heads)."""
    hc = tl.arange(0, HP)[None, :]
    tl.store(ptr + (b * T + t)[:, None] * H + hc, tl.sum(v, 2), mask=(hc < H) & vt[:, None])


@triton.jit
def _tile_energy(wsq, rden, bias, p0, t, vt, tmax, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
                 BOUNDED: tl.constexpr):
    """e [BT, HP, 1] = sum_d w^2 / max(S, eps) + D * denom_bias[h, pos0 + t]."""
    e = tl.sum(wsq * rden, 2, keep_dims=True)
    if BOUNDED:
        hc = tl.arange(0, HP)[None, :]
        e += D * tl.load(bias + hc * tmax + p0 + t[:, None], mask=(hc < H) & vt[:, None], other=0.0)[:, :, None]
    return e


@triton.jit
def _tile_pi(x, S, tv, bias, p0, t, vt, tmax, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
             BOUNDED: tl.constexpr):
    """From S [1, HP, BD] before the tile: Pi and e [BT, HP, 1], w^2, S after each token and 1/max(S, eps)
    [BT, HP, BD]; tv: temp as [1, HP, 1]."""
    hc = tl.arange(0, HP)[None, :, None]
    wsq = x * x
    Sc = S + tl.cumsum(wsq, 0)
    rden = _rcp(tl.maximum(Sc, 1e-12))
    e = _tile_energy(wsq, rden, bias, p0, t, vt, tmax, D, H, HP, BOUNDED)
    z = tl.where(hc < H, e * tv, float("-inf"))
    p = tl.exp(z - tl.max(z, 1, keep_dims=True))
    pi = tl.where(vt[:, None, None], p * _rcp(tl.sum(p, 1, keep_dims=True)), 0.0)
    return pi, e, wsq, Sc, rden


@triton.jit
def _tile_wsum(w, b, lo, hi, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr,
               BD: tl.constexpr, BT: tl.constexpr):
    """sum of w^2 over tokens [lo, hi) of sequence b -> [HP, BD]."""
    acc = tl.zeros([1, HP, BD], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        x = _tile_rows(w, b, t, t < hi, T, C, D, H, HP, BD)
        acc += tl.sum(x * x, 0, keep_dims=True)
    return tl.sum(acc, 0)


@triton.jit
def _tile_walk_pi(w, S, tv, bias, p0, pi_out, b, lo, hi, T, tmax, C: tl.constexpr, D: tl.constexpr,
                  H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BOUNDED: tl.constexpr):
    """From S at token lo: Pi of tokens [lo, hi) (stored) and their sums of Pi w^2 [HP, BD] and Pi [HP]."""
    S = S[None, :, :]
    tv = tv[None, :, None]
    A = tl.zeros([1, HP, BD], dtype=tl.float32)
    P = tl.zeros([1, HP, 1], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        vt = t < hi
        x = _tile_rows(w, b, t, vt, T, C, D, H, HP, BD)
        pi, _, wsq, _, _ = _tile_pi(x, S, tv, bias, p0, t, vt, tmax, D, H, HP, BOUNDED)
        _store_heads(pi_out, pi, b, t, vt, T, H, HP)
        S += tl.sum(wsq, 0, keep_dims=True)
        A += tl.sum(pi * wsq, 0, keep_dims=True)
        P += tl.sum(pi, 0, keep_dims=True)
    return tl.sum(A, 0), tl.sum(tl.sum(P, 2), 0)


@triton.jit
def _tile_walk_out(w, pi_in, y, A, P, b, lo, hi, T, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr,
                   HP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, P_CHANNELS: tl.constexpr = False):
    """From the sums A, P at token lo: y of tokens [lo, hi). P_CHANNELS: P carried per channel (see p_channels)."""
    A = A[None, :, :]
    P = P[None, :, None] + 1e-8                      # P's epsilon added once, not once a token (y's 1 / (P + 1e-8))
    if P_CHANNELS:
        P = P + tl.zeros([1, HP, BD], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        vt = t < hi
        x = _tile_rows(w, b, t, vt, T, C, D, H, HP, BD)
        pi = _heads(pi_in, b, t, vt, T, H, HP)
        if P_CHANNELS:
            pi = pi + tl.zeros_like(x)
        px = pi * x
        piw = px * x
        Ac = A + tl.cumsum(piw, 0)
        if P_CHANNELS:
            Pe = P + tl.cumsum(pi, 0)
            out = -px * Pe * _rcp(Pe + Ac)                                 # the same, A / P's divide folded in
        else:
            out = -px * _rcp(1.0 + Ac * _rcp(P + _heads_cumsum(pi)))
        _tile_store(y, out, b, t, vt, T, C, D, H, HP, BD)
        A += tl.sum(piw, 0, keep_dims=True)
        P += tl.sum(pi, 0, keep_dims=True)


@triton.jit
def _tile_b_walk(w, gy, pi_in, ge_io, gpi_io, bias, gtemp, gbias, dw, S, A, P, Ra, Rp, Rc, tv, p0, b, lo, hi, T,
                 tmax, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, BD: tl.constexpr,
                 BT: tl.constexpr, BOUNDED: tl.constexpr, PI_STORED: tl.constexpr, STAGE: tl.constexpr,
                 PAIR: tl.constexpr, SPLIT_PI: tl.constexpr):
    # The stages of causal_tssa._b_walk, a tile at a time. Ra, Rp (fp32) and Rc (fp64) enter as the gradients
    # flowing into A, P, S at token lo from it and every later token, and are carried as their value after each tile
    # (where SPLIT_PI, stage 2 instead adds their terms at token lo to what stage 1 stored of d Pi).
    hc = tl.arange(0, HP)[None, :, None]
    S = S[None, :, :]
    A = A[None, :, :]
    P = P[None, :, None]
    Ra = Ra[None, :, :]
    Rp = Rp[None, :, None]
    Rc = Rc[None, :, :]
    tv = tv[None, :, None]
    GA = tl.zeros([1, HP, BD], dtype=tl.float32)
    GP = tl.zeros([1, HP, 1], dtype=tl.float32)
    GCs, GCl = _suffix_split(tl.zeros([1, HP, BD], dtype=tl.float64), PAIR)    # fp64 or fp32 pairs, as Rc
    Rc, Rl = _suffix_split(Rc, PAIR)
    gt = tl.zeros([1, HP, 1], dtype=tl.float32)
    for t0 in range(lo, hi, BT):
        t = t0 + tl.arange(0, BT)
        vt = t < hi
        hm = (hc < H) & vt[:, None, None]
        x = _tile_rows(w, b, t, vt, T, C, D, H, HP, BD)
        if STAGE != 2 or not SPLIT_PI:
            g = _tile_rows(gy, b, t, vt, T, C, D, H, HP, BD)
        if PI_STORED:
            pi = _heads(pi_in, b, t, vt, T, H, HP)
            wsq = x * x
            if STAGE >= 2:
                Sc = S + tl.cumsum(wsq, 0)
                rden = _rcp(tl.maximum(Sc, 1e-12))
                if STAGE == 2:
                    e = _tile_energy(wsq, rden, bias, p0, t, vt, tmax, D, H, HP, BOUNDED)   # for d temp
        else:
            pi, e, wsq, Sc, rden = _tile_pi(x, S, tv, bias, p0, t, vt, tmax, D, H, HP, BOUNDED)
        piw = pi * wsq
        if STAGE != 2 or not SPLIT_PI:
            Ac = A + tl.cumsum(piw, 0)
            rpe = _rcp(P + _heads_cumsum(pi) + 1e-8)                      # [BT, HP, 1]
            inv = _rcp(1.0 + Ac * rpe)
            gdots = g * x * pi * inv * inv
            ga = gdots * rpe                                              # direct d loss / d A_t
            gp = -tl.sum(gdots * Ac, 2, keep_dims=True) * rpe * rpe       # direct d loss / d P_t
            ga_tile = tl.sum(ga, 0, keep_dims=True)
            gp_tile = tl.sum(gp, 0, keep_dims=True)
        if STAGE >= 2:
            if STAGE == 3 or not SPLIT_PI:
                # (stage 3 carries Rp too, unused: without it Triton 3.6 moves the whole 1 / (1 + dots) tile between
                # layouts rather than the per-head 1 / (P + eps), 14 barriers a tile more)
                Ra = Ra - ga_tile                                         # flowing in after the tile
                Rp = Rp - gp_tile
                Ra_t = Ra + _csum(ga, True)                               # ... and from tokens t.. of the tile
                Rp_t = Rp + _heads_cumsum(gp, True)
            if STAGE == 2:
                if SPLIT_PI:
                    gpi = _heads(gpi_io, b, t, vt, T, H, HP) + tl.sum(Ra * wsq, 2, keep_dims=True) + Rp
                else:
                    gpi = tl.sum(-x * g * inv + Ra_t * wsq, 2, keep_dims=True) + Rp_t
                gz = pi * (gpi - tl.sum(pi * gpi, 1, keep_dims=True))      # softmax over heads
                gz = tl.where(hm, gz, 0.0)
                ge = gz * tv
                _store_heads(ge_io, ge, b, t, vt, T, H, HP)
                if BOUNDED:
                    h2 = tl.arange(0, HP)[None, :]
                    tl.atomic_add(gbias + h2 * tmax + p0 + t[:, None], D * tl.sum(ge, 2),
                                  mask=(h2 < H) & vt[:, None], sem="relaxed")
                gt += tl.sum(gz * e, 0, keep_dims=True)
            else:
                ge = _heads(ge_io, b, t, vt, T, H, HP)
            gc = tl.where(Sc > 1e-12, _suffix_term(-ge * wsq * rden, rden, PAIR), 0.0)   # direct d loss / d S_t
            # the tile's total, which stage 3 takes off what stage 2 added: fp64, or as a pair summed error-free, so
            # that the two agree whatever order the compiler sums each stage's tokens in
            if PAIR:
                gc_tile, gc_err = tl.reduce((gc, tl.zeros_like(gc)), 0, _two_sum, keep_dims=True)
            else:
                gc_tile, gc_err = tl.sum(gc.to(tl.float64), 0, keep_dims=True), 0.0
            if STAGE == 3:
                Rc, Rl = _suffix_add(Rc, Rl, gc_tile, PAIR, True)
                Rl -= gc_err                                   # the total's own rounding error (none in fp64)
                Rc_t = _suffix_value(Rc, Rl, PAIR, tl.float32) + _csum(gc, True)
                grad = pi * (2.0 * Ra_t * x - g * inv) + 2.0 * x * (ge * rden + Rc_t)
                _tile_store(dw, grad, b, t, vt, T, C, D, H, HP, BD)
            else:
                GCs, GCl = _suffix_add(GCs, GCl, gc_tile, PAIR)
                GCl += gc_err
        else:
            if SPLIT_PI:
                # d Pi_t less sum_d Ra w^2 + Rp at token lo: what the tokens before t took off them, and -g x inv
                ea = GA + tl.cumsum(ga, 0) - ga
                ep = GP + _heads_cumsum(gp) - gp
                _store_heads(gpi_io, tl.sum(-x * g * inv - ea * wsq, 2, keep_dims=True) - ep, b, t, vt, T, H, HP)
            GA += ga_tile
            GP += gp_tile
        if STAGE >= 2 or not PI_STORED:
            S += tl.sum(wsq, 0, keep_dims=True)
        A += tl.sum(piw, 0, keep_dims=True)
        P += tl.sum(pi, 0, keep_dims=True)
    if STAGE == 2:
        tl.atomic_add(gtemp + tl.arange(0, HP), tl.sum(tl.sum(gt, 2), 0), mask=tl.arange(0, HP) < H,
                      sem="relaxed")
    return tl.sum(GA, 0), tl.sum(tl.sum(GP, 2), 0), tl.sum(_suffix_value(GCs, GCl, PAIR, tl.float64), 0)
