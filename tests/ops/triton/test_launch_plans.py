"""Launch plans at real shapes with a card's figures but no GPU: the kernels compile for the card and launch through
Triton's real path to the stand-in driver (benchmarks/stand_in), so the decisions that read a compiled kernel (its
registers, from cuobjdump) are the ones that card would make."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from tost_edge.ops.triton import tssa as tt  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]

# TSSA forwards at ViT-S's shape (N196 C384 H8, bf16) of the given batch sizes: [scheme, Triton launches] each
SCRIPT = """
import json, sys, torch
sys.path.insert(0, "benchmarks")
import stand_in
launches = stand_in.activate(getattr(stand_in, sys.argv[1]))
from tost_edge.ops import tssa
from tost_edge.ops.triton import tssa as tt
out = {}
for B in map(int, sys.argv[2:]):
    n = launches()
    tssa(torch.randn(B, 196, 384, dtype=torch.bfloat16), torch.rand(8) + 0.5, 8, backend="triton")
    out[B] = [tt.last_run["forward"], launches() - n]
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the stand-in driver is built with gcc")
@pytest.mark.parametrize("card, sms", [("H100", 132), ("ORIN", 16)])
def test_the_resident_forward_runs_in_one_wave_where_the_card_holds_it(card, sms):
    """RESIDENT_ONE_WAVE: the forward runs as one resident launch where every program fits on the GPU at once, else
    as the three passes. Held at once: 4-warp programs capped at 96 registers a thread take 5 warps of a
    scheduler's 16,384 registers, so 5 programs an SM; a batch element of 196 tokens is 7 programs (32 tokens
    each: 16,384 held elements over 8 heads of 48 channels, to a power of two). So an H100 (132 SMs) holds 94 batch
    elements, an Orin (16 SMs) 11."""
    assert (tt.RESIDENT_WARPS, tt.RESIDENT_MAXNREG, tt.RESIDENT_TILE) == (4, 96, 16384), "the arithmetic above"
    fits = sms * 5 // 7
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, card, "1", str(fits), str(fits + 1)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = json.loads(r.stdout.strip().splitlines()[-1])
    assert ran == {"1": ["resident", 1], str(fits): ["resident", 1], str(fits + 1): ["passes", 3]}, ran
