"""Recurrent state of causal TSSA and the argument checks shared by its forms."""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ..._checks import as_state, check_divisible, check_float, check_rank, fail, tracing
from ..tssa.naive import check_temp

DENOM_MIN = 1e-12  # clamp of the running sum of w^2
PI_EPS = 1e-8      # added to the running sum of Pi


class CausalTSSAState(NamedTuple):
    """Running sums after the last token seen, always fp32 (fp64 for fp64 inputs).

    sum_wsq:    [B, H, D]  sum_t w_t^2
    sum_pi_wsq: [B, H, D]  sum_t Pi_t * w_t^2
    sum_pi:     [B, H]     sum_t Pi_t
    """
    sum_wsq: torch.Tensor
    sum_pi_wsq: torch.Tensor
    sum_pi: torch.Tensor

    @staticmethod
    def zeros(batch: int, num_heads: int, head_dim: int, device=None, dtype=torch.float32) -> "CausalTSSAState":
        n = batch * num_heads * head_dim
        buf = torch.zeros(2 * n + batch * num_heads, device=device, dtype=dtype)   # one allocation and memset
        return CausalTSSAState.over(buf, batch, num_heads, head_dim)

    @staticmethod
    def over(buf: torch.Tensor, batch: int, num_heads: int, head_dim: int) -> "CausalTSSAState":
        """The three sums as views of the first 2 * B * H * D + B * H elements of buf."""
        n, m = batch * num_heads * head_dim, batch * num_heads
        return CausalTSSAState(buf[:n].view(batch, num_heads, head_dim), buf[n:2 * n].view(batch, num_heads, head_dim),
                               buf[2 * n:2 * n + m].view(batch, num_heads))


PosLike = Union[int, torch.Tensor]


def state_dtype(w: torch.Tensor) -> torch.dtype:
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def prepare(w, temp, denom_bias, num_heads, state, pos0, fill: bool = True):
    """Validate the arguments; return (B, T, H, D, temp [H], bias [H, Tmax] or None, state, pos0 [B] int64).
    fill=False leaves the zero state and an int pos0's positions to the caller: state None and an int come back
    as they are (the Triton path fills them in one memset with its own zero-filled buffers)."""
    check_rank("w", w, 3, "[B, T, C]")
    check_float("w", w)
    B, T, C = w.shape
    check_divisible("w.shape[-1] (C)", C, num_heads)
    H, D = num_heads, C // num_heads
    temp = check_temp(temp, H)
    sdt = state_dtype(w)
    traced = tracing()                    # asked once: ~2 µs of host time a call each
    if isinstance(pos0, torch.Tensor):
        if pos0.dim() == 0:
            pos0 = pos0.reshape(1).expand(B)
        if pos0.shape != (B,) or pos0.dtype.is_floating_point:
            fail("pos0", f"an int or an integer tensor of shape ({B},)", f"{pos0.dtype} shape {tuple(pos0.shape)}")
        # per-sequence positions are range-checked on the host where they index denom_bias: free for a CPU tensor,
        # one read back (a wait for the GPU) for a GPU one; a position-free model never reads them, so nothing is
        # read back there
        check = B and denom_bias is not None and not traced
        lo, hi = torch.stack(pos0.aminmax()).tolist() if check else (0, 0)
        pos = pos0.to(device=w.device, dtype=torch.long)
    else:
        lo = hi = int(pos0)               # an int is checked as it is: no device read back (a sync) per call
        pos = torch.full((B,), lo, dtype=torch.long, device=w.device) if fill else lo
    if B and not traced and lo < 0:
        fail("pos0", "positions >= 0", pos.tolist() if isinstance(pos, torch.Tensor) else lo)
    if denom_bias is not None:
        if denom_bias.dim() == 3 and denom_bias.shape[2] == 1:
            denom_bias = denom_bias.squeeze(2)     # a view both ways (see check_temp)
        if denom_bias.dim() != 2 or denom_bias.shape[0] != H:
            fail("denom_bias", f"shape ({H}, Tmax) or ({H}, Tmax, 1)", f"shape {tuple(denom_bias.shape)}")
        tmax = denom_bias.shape[1]
        end = hi + T if B and not traced else T
        if end > tmax and not traced:
            fail("pos0 + T", f"at most denom_bias.shape[1] = {tmax} (the model's position range)", end)
    if state is None:
        state = CausalTSSAState.zeros(B, H, D, device=w.device, dtype=sdt) if fill else None
    else:
        state = as_state(CausalTSSAState, state)
        for name, t, shape in (("state.sum_wsq", state.sum_wsq, (B, H, D)),
                               ("state.sum_pi_wsq", state.sum_pi_wsq, (B, H, D)),
                               ("state.sum_pi", state.sum_pi, (B, H))):
            if tuple(t.shape) != shape:
                fail(name, f"shape {shape}", f"shape {tuple(t.shape)}")
            if t.dtype not in (torch.float32, torch.float64):
                fail(name, "float32 (recurrent state is always fp32)", t.dtype)
        state = CausalTSSAState(*(t.to(sdt) for t in state))
    return B, T, H, D, temp, denom_bias, state, pos


def gather_bias(denom_bias: Optional[torch.Tensor], pos: torch.Tensor, T: int, H: int, dtype) -> torch.Tensor:
    """denom_bias [H, Tmax] at positions pos[b] + t -> [B, T, H] (zeros when the model has no position table)."""
    B = pos.shape[0]
    if denom_bias is None:
        return torch.zeros(B, T, H, dtype=dtype, device=pos.device)
    idx = pos[:, None] + torch.arange(T, device=pos.device)      # [B, T]
    return denom_bias.to(dtype)[:, idx].permute(1, 2, 0)         # [B, T, H]
