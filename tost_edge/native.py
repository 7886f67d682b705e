"""ctypes bindings of libtost_kernels.so (the plugins' CUDA kernels, C ABI, no TensorRT needed).

    lib = load_kernels()                       # $TOST_EDGE_KERNELS_LIB, or build/libtost_kernels.so
    y = lib.tssa(w, temp, num_heads)           # torch CUDA tensors in, torch CUDA tensors out
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional, Tuple

_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
_i64, _i32, _p, _f = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_float


def default_library_path() -> Path:
    env = os.environ.get("TOST_EDGE_KERNELS_LIB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "build" / "libtost_kernels.so"


class TostKernels:
    def __init__(self, path: Optional[os.PathLike] = None):
        path = Path(path) if path else default_library_path()
        if not path.is_file():
            raise FileNotFoundError(f"libtost_kernels.so: not found at {path}; build it with "
                                    "`cmake -S . -B build && cmake --build build` or set TOST_EDGE_KERNELS_LIB")
        self.lib = ctypes.CDLL(str(path))
        L = self.lib
        L.tost_tssa_workspace_size.restype = ctypes.c_size_t
        L.tost_tssa_workspace_size.argtypes = [_i64, _i64, _i32, _i32]
        L.tost_tssa_forward.argtypes = [_p, _p, _p, _i64, _i64, _i32, _i32, _i32, _p, ctypes.c_size_t, _p]
        L.tost_causal_tssa_forward.argtypes = [_p, _p, _p, _i64, _i32, _p, _p, _p, _p, _p, _p, _p, _p,
                                               _i64, _i64, _i32, _i32, _i32, _p]
        L.tost_causal_linear_attention_forward.argtypes = [_p, _p, _p, _p, _p, _p, _p, _p, _i64, _i64, _i32, _i32,
                                                           _i32, _f, _i32, _p]
        L.tost_last_error.restype = ctypes.c_char_p

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.tost_last_error().decode()}")

    @staticmethod
    def _dt(t) -> int:
        return _DTYPES[str(t.dtype).replace("torch.", "")]

    @staticmethod
    def _stream():
        import torch
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def tssa(self, w, temp, num_heads: int):
        """w: [B, N, C] CUDA (fp32/fp16/bf16), temp: [H] -> y: [B, N, C]."""
        import torch
        w = w.contiguous()
        B, N, C = w.shape
        D = C // num_heads
        temp = temp.reshape(-1).float().contiguous()
        y = torch.empty_like(w)
        ws_bytes = self.lib.tost_tssa_workspace_size(B, N, num_heads, D)
        ws = torch.empty(max(ws_bytes, 4), dtype=torch.uint8, device=w.device)
        self._check(self.lib.tost_tssa_forward(w.data_ptr(), temp.data_ptr(), y.data_ptr(), B, N, num_heads, D,
                                               self._dt(w), ws.data_ptr(), ws_bytes, self._stream()), "tssa")
        return y

    def causal_tssa(self, w, temp, denom_bias, num_heads: int, state=None, pos=None) -> Tuple:
        """w: [B, T, C]; denom_bias: [H, Tmax] or None; state: (sum_wsq, sum_pi_wsq, sum_pi) fp32; pos: [B] int.
        Returns (y, (sum_wsq, sum_pi_wsq, sum_pi))."""
        import torch
        w = w.contiguous()
        B, T, C = w.shape
        H, D = num_heads, C // num_heads
        dev = w.device
        if state is None:
            state = (torch.zeros(B, H, D, device=dev), torch.zeros(B, H, D, device=dev), torch.zeros(B, H, device=dev))
        s_in = [s.float().contiguous() for s in state]
        s_out = [torch.empty_like(s) for s in s_in]
        pos = torch.zeros(B, dtype=torch.int32, device=dev) if pos is None else pos.to(dev, torch.int32).contiguous()
        bounded = denom_bias is not None
        bias = denom_bias.reshape(H, -1).float().contiguous() if bounded else torch.zeros(H, 1, device=dev)
        y = torch.empty_like(w)
        self._check(self.lib.tost_causal_tssa_forward(
            w.data_ptr(), temp.reshape(-1).float().contiguous().data_ptr(), bias.data_ptr(), bias.shape[1],
            int(bounded), pos.data_ptr(), *[s.data_ptr() for s in s_in], y.data_ptr(), *[s.data_ptr() for s in s_out],
            B, T, H, D, self._dt(w), self._stream()), "causal_tssa")
        return y, tuple(s_out)

    def causal_linear_attention(self, q, k, v, state=None, eps: float = 1e-6) -> Tuple:
        """q, k: [B, T, H, D]; v: [B, T, H, M]; state: (kv [B, H, D, M], k_sum [B, H, D]) -> (y, state)."""
        import torch
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, H, D = q.shape
        M = v.shape[-1]
        if state is None:
            state = (torch.zeros(B, H, D, M, device=q.device), torch.zeros(B, H, D, device=q.device))
        s_in = [s.float().contiguous() for s in state]
        s_out = [torch.empty_like(s) for s in s_in]
        y = torch.empty_like(v)
        self._check(self.lib.tost_causal_linear_attention_forward(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), *[s.data_ptr() for s in s_in], y.data_ptr(),
            *[s.data_ptr() for s in s_out], B, T, H, D, M, eps, self._dt(q), self._stream()), "causal_linear_attention")
        return y, tuple(s_out)


def load_kernels(path: Optional[os.PathLike] = None) -> TostKernels:
    return TostKernels(path)
