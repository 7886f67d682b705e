"""`tost-edge check-env`: whether the installed Triton can compile for the machine's GPU (Jetson Thor's sm_110
needs CUDA 13's ptxas, which Triton 3.6 does not bundle), asked of Triton's own ptxas, no GPU needed."""
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tost_edge import env

CODE = "from tost_edge.env import triton_target; print(triton_target(({}, {})))"


def ask(capability, **extra):
    """triton_target in a fresh process, with the environment (and the Triton on PYTHONPATH) given."""
    e = {**os.environ, **extra}
    r = subprocess.run([sys.executable, "-c", CODE.format(*capability)], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_triton_targets_hopper_and_orin():
    pytest.importorskip("triton.backends.nvidia")
    assert env.triton_target((9, 0)) is None and env.triton_target((8, 7)) is None


def test_an_architecture_triton_does_not_know_is_named_with_the_fix():
    pytest.importorskip("triton.backends.nvidia")
    problem = env.triton_target((13, 0))                      # beyond any released ptxas
    assert "cannot compile for this GPU's sm_130a" in problem
    assert "TRITON_PTXAS_BLACKWELL_PATH=/usr/local/cuda/bin/ptxas" in problem


def test_thor_under_triton_3_6_needs_cuda_13s_ptxas():
    extra = os.environ.get("TOST_EDGE_EXTRA_TRITON")
    if not extra or not (Path(extra) / "triton").is_dir():
        pytest.skip("TOST_EDGE_EXTRA_TRITON does not name a folder holding another Triton (scripts/test.sh sets it)")
    path = os.pathsep.join([extra, str(Path(__file__).resolve().parents[1])])
    assert "cannot compile for this GPU's sm_110a" in ask((11, 0), PYTHONPATH=path)      # 3.6: CUDA 12.9's ptxas
    ptxas = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "ptxas"
    if ptxas.exists() and "release 13" in subprocess.run([str(ptxas), "--version"], capture_output=True,
                                                         text=True).stdout:
        assert ask((11, 0), PYTHONPATH=path, TRITON_PTXAS_BLACKWELL_PATH=str(ptxas)) == "None"   # the fix works


def test_check_env_shows_the_problem():
    from rich.console import Console
    out = io.StringIO()
    info = {**env.check_env(), "gpu": "NVIDIA Thor (sm_110)", "triton_target": "Triton's ptxas cannot ..."}
    env.render(info, Console(file=out, width=200))
    assert "backend='triton' will not compile here: Triton's ptxas cannot ..." in out.getvalue()


THOR = """
import sys, torch
sys.path.insert(0, "benchmarks")
import stand_in
stand_in.activate(dict(stand_in.H100, name="Thor", capability=(11, 0)))   # only the capability matters here
from tost_edge.ops import tssa
try:
    tssa(torch.randn(2, 16, 96, dtype=torch.bfloat16), torch.rand(2) + 0.5, 2, backend="triton")
except RuntimeError as e:
    print(e)
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the stand-in driver is built with gcc")
def test_a_triton_op_on_thor_under_triton_3_6_names_the_fix():
    """Through the stand-in driver as a capability 11.0 GPU: the first kernel's compile fails in Triton 3.6's
    ptxas (CUDA 12.9, which named Thor sm_101), and the op's error says what to set instead of ending a compiler
    traceback; with CUDA 13's ptxas the same call compiles."""
    extra = os.environ.get("TOST_EDGE_EXTRA_TRITON")
    if not extra or not (Path(extra) / "triton").is_dir():
        pytest.skip("TOST_EDGE_EXTRA_TRITON does not name a folder holding another Triton (scripts/test.sh sets it)")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([extra, str(root)])
    r = subprocess.run([sys.executable, "-c", THOR], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backend='triton': Triton's ptxas" in r.stdout and "cannot compile for this GPU's sm_110a" in r.stdout
    assert "TRITON_PTXAS_BLACKWELL_PATH=/usr/local/cuda/bin/ptxas" in r.stdout, r.stdout
    ptxas = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "ptxas"
    if ptxas.exists() and "release 13" in subprocess.run([str(ptxas), "--version"], capture_output=True,
                                                         text=True).stdout:
        r = subprocess.run([sys.executable, "-c", THOR], capture_output=True, text=True, cwd=root, timeout=600,
                           env={**env, "TRITON_PTXAS_BLACKWELL_PATH": str(ptxas)})
        assert r.returncode == 0 and not r.stdout.strip(), (r.stdout, r.stderr[-3000:])       # compiled, ran
