"""Every Triton kernel compiles for a real GPU target (sm_90, Orin's sm_87 and Thor's sm_110) with Triton's own
ptxas (for sm_110 under a Triton whose own ptxas predates it, CUDA 13's, as on a Thor), no GPU needed: the interpreter the other tests run under accepts code that the compiler rejects (e.g. a kernel reading a
plain Python global). Under the installed Triton and, where TOST_EDGE_EXTRA_TRITON names a folder holding another
(scripts/test.sh installs 3.6, which CUDA builds of torch 2.11 pin), under that one too: the two lay tiles out
differently, and 3.6 failed to compile scans that 3.9 accepts."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def triton_knows_sm110(env: dict) -> bool:
    """Whether the Triton that env runs has a ptxas that targets sm_110 of its own (3.9's does, 3.6's not)."""
    code = ("import subprocess; from triton import knobs; t = knobs.nvidia.ptxas_blackwell; "
            "print(subprocess.run([t.path, '--help'], capture_output=True, text=True).stdout)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return "sm_110" in r.stdout


def cuda13_tools(env: dict) -> None:
    """Points Triton at the machine's CUDA 13 ptxas and disassemblers (sm_110), or skips where there are none."""
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin"
    r = subprocess.run([str(cuda / "ptxas"), "--version"], capture_output=True, text=True) \
        if (cuda / "ptxas").exists() else None
    version = re.search(r"release (\d+)\.", r.stdout) if r else None
    if not version or int(version.group(1)) < 13:
        pytest.skip(f"sm_110 needs CUDA 13's ptxas: none in {cuda}")
    env["TRITON_PTXAS_BLACKWELL_PATH"] = str(cuda / "ptxas")
    if (cuda / "cuobjdump").exists():                   # else no SASS counts, which this test does not read
        env["TRITON_CUOBJDUMP_PATH"] = str(cuda / "cuobjdump")


@pytest.mark.parametrize("triton_dir", ["installed", "extra"], ids=["triton-installed", "triton-extra"])
@pytest.mark.parametrize("arch", [90, 87, 110], ids=["sm90", "sm87", "sm110"])
def test_kernels_compile_for_gpu(arch, triton_dir):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_dir == "extra":
        extra = os.environ.get("TOST_EDGE_EXTRA_TRITON")
        if not extra or not (Path(extra) / "triton").is_dir():
            pytest.skip("TOST_EDGE_EXTRA_TRITON does not name a folder holding another Triton "
                        "(scripts/test.sh sets it)")
        env["PYTHONPATH"] = os.pathsep.join([extra, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if arch == 110 and not triton_knows_sm110(env):
        cuda13_tools(env)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--quick", "--arch", str(arch)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    version = r.stdout.splitlines()[0]
    assert version.startswith("Triton "), r.stdout[:200]
    if triton_dir == "extra":                       # the other Triton, not the installed one, compiled them
        import triton
        assert not version.startswith(f"Triton {triton.__version__},"), version
    lines = [ln for ln in r.stdout.splitlines() if " regs " in ln]
    assert len(lines) >= 14, r.stdout               # every kernel of the three ops, and the slice scan
    for ln in lines:
        assert " regs " in ln and "sass" in ln
    tiled = [ln for ln in lines if ln.startswith("causal tiled")]
    assert len(tiled) >= 2, r.stdout
    for ln in tiled:     # the point of the tiles: cumulative sums over tokens held in each thread, no tile moved
        assert "tiles: tokens in-thread, 0 moved" in ln, ln
    held = [ln for ln in lines if ln.startswith("tssa resident")]
    assert len(held) == 2, r.stdout                 # forward and backward at the default settings
    for ln in held:      # a D48 head held as three parts of one layout: per-token values join them, no tile moves
        assert ln.endswith("tiles moved 0"), ln
        if arch == 90:   # the default register caps were chosen so that (almost) nothing spills there
            assert int(re.search(r" stack +(\d+) ", ln).group(1)) <= 8, ln
    resident = [ln for ln in r.stdout.splitlines() if "programs a batch element" in ln]
    assert len(resident) == (2 if arch in (90, 87) else 0), r.stdout     # compile_report.CARDS: an H100, an Orin
    if arch == 90:       # an H100 holds a B64 N4096 C384 batch element's programs at once: the scheme applies
        assert all(ln.endswith("(resident)") for ln in resident), resident


@pytest.mark.parametrize("arch", [90, 87], ids=["sm90", "sm87"])
def test_layouts_table_counts_the_walk_loops(arch):
    """`compile_report.py --layouts` finds the three walk loops of each fused causal kernel (the loops that poll for
    other programs' sums are not among them) and reports their cost a padded element, their barriers a token and
    their fp64 instructions: the backward's sums of d S in fp64 on sm_90, in fp32 pairs (none) on Orin's sm_87."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--layouts", "--arch",
                        str(arch), "--only", "walk H12 warps8 tokens4$"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith(("fwd ", "bwd "))]
    assert [row[:5] for row in rows] == [["fwd", "12", "walk", "8", "4"], ["bwd", "12", "walk", "8", "4"]], r.stdout
    for row in rows:
        cap, regs, per_sm, sass, barriers = int(row[5]), int(row[6]), int(row[8]), float(row[9]), float(row[10])
        assert 0 < regs <= 255 and per_sm >= 1, row
        assert regs <= cap or cap == 0, row                   # the backward compiled as it launches: under its cap
        assert 10 < sass < 500 and 0 <= barriers < 50, row   # nan where the loops were not found
    fwd64, bwd64 = float(rows[0][11]), float(rows[1][11])
    assert fwd64 == 0 and (bwd64 > 0 if arch == 90 else bwd64 == 0), rows
