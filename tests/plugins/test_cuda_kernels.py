"""GPU: the CUDA kernels of libtost_kernels.so (through ctypes) against the torch reference."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_close
from tost_edge.ops import CausalTSSAState, LinearAttentionState, naive_causal_linear_attention, naive_causal_tssa, naive_tssa

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    from tost_edge.native import TostKernels, default_library_path
    path = default_library_path()
    if not path.exists():
        if shutil.which("cmake") is None:
            pytest.skip("libtost_kernels.so not built and cmake missing")
        build = tmp_path_factory.mktemp("native")
        major, minor = torch.cuda.get_device_capability()
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}",
                        "-DTensorRT_ROOT=/nonexistent"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "tost_kernels", "-j", "8"], check=True,
                       capture_output=True)
        path = build / "libtost_kernels.so"
    return TostKernels(path)


SIZES = [(1, 48, 3), (63, 64, 4), (500, 48, 2), (130, 64, 12)]
IDS = [f"T{t}-D{d}-H{h}" for t, d, h in SIZES]
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("N,D,H", SIZES, ids=IDS)
def test_tssa_kernel(kernels, N, D, H, dtype):
    w = torch.randn(2, N, H * D, device="cuda").to(dtype)
    temp = torch.rand(H, device="cuda") + 0.5
    assert_close("y", naive_tssa(w.double(), temp.double(), H), kernels.tssa(w, temp, H), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("T,D,H", SIZES, ids=IDS)
def test_causal_tssa_kernel_prefill_and_steps(kernels, T, D, H, dtype):
    B = 3
    w = torch.randn(B, T, H * D, device="cuda").to(dtype)
    temp, bias = torch.rand(H, device="cuda") + 0.5, 0.1 * torch.randn(H, T + 10, device="cuda")
    pos = torch.tensor([0, 3, 10], device="cuda")
    yr, sr = naive_causal_tssa(w.double(), temp.double(), bias.double(), H, pos0=pos)
    y, s = kernels.causal_tssa(w, temp, bias, H, pos=pos)
    assert_close("y", yr, y, TOL[dtype])
    for a, b in zip(s, sr):
        assert_close("state", b, a, 1e-5 if dtype == torch.float32 else 1e-3)
    # prefill a prefix, then one step at a time: equals the whole block
    c = T // 2
    ya, st = kernels.causal_tssa(w[:, :c], temp, bias, H, pos=pos)
    ys = [ya]
    for t in range(c, T):
        yt, st = kernels.causal_tssa(w[:, t:t + 1], temp, bias, H, state=st, pos=pos + t)
        ys.append(yt)
    assert_close("prefill+steps", y.double(), torch.cat(ys, 1), 1e-5 if dtype == torch.float32 else 2e-3)


def test_causal_tssa_unbounded(kernels):
    w, temp = torch.randn(2, 40, 128, device="cuda"), torch.rand(4, device="cuda") + 0.5
    y, _ = kernels.causal_tssa(w, temp, None, 4, pos=torch.tensor([100000, 7], device="cuda"))
    assert_close("y", naive_causal_tssa(w.double(), temp.double(), None, 4)[0], y, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("T,D,H", SIZES, ids=IDS)
def test_causal_linear_attention_kernel(kernels, T, D, H, dtype):
    q, k, v = (torch.randn(2, T, H, D, device="cuda").to(dtype) for _ in range(3))
    s0 = (torch.rand(2, H, D, D, device="cuda"), torch.rand(2, H, D, device="cuda"))
    yr, sr = naive_causal_linear_attention(q.double(), k.double(), v.double(), LinearAttentionState(*[s.double() for s in s0]))
    y, s = kernels.causal_linear_attention(q, k, v, s0)
    assert_close("y", yr, y, TOL[dtype])
    for a, b in zip(s, sr):
        assert_close("state", b, a, 1e-5 if dtype == torch.float32 else 2e-3)


def test_fp16_state_after_100k_steps(kernels):
    """100k fp16 steps through the step form: the fp32 sums stay finite and match fp64."""
    B, H, D, n = 1, 2, 32, 100_000
    w = torch.randn(n, B, 1, H * D, device="cuda").half()
    temp = torch.rand(H, device="cuda") + 0.5
    st = None
    for t in range(n):
        _, st = kernels.causal_tssa(w[t], temp, None, H, state=st, pos=torch.tensor([t], device="cuda"))
    _, ref = naive_causal_tssa(w[:, :, 0].transpose(0, 1).double(), temp.double(), None, H)
    for a, b in zip(st, ref):
        assert torch.isfinite(a).all()
        assert (a.double() - b).abs().max() / b.abs().max() <= 1e-3


def test_bad_arguments_are_reported(kernels):
    w = torch.randn(1, 4, 65 * 2, device="cuda")
    with pytest.raises(RuntimeError, match="num_heads: expected at most 64, got 65"):
        kernels.tssa(w, torch.ones(65, device="cuda"), 65)
