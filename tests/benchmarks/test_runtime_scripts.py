"""The runtime's CPU benchmark scripts run end to end (tiny model, one repeat): what they time here means little."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_prefill_batch_benchmark_smoke(tmp_path):
    out = tmp_path / "prefill.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prefill_batch.py"), "--model", "tost_lm_tiny",
                        "--reps", "1", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["calls_together"] for row in rows] == [1, 6, 1]
    assert [row["calls_one_by_one"] for row in rows] == [32, 32, 8]
    assert all(row["together_ms"] > 0 and row["one_by_one_ms"] > 0 for row in rows)
