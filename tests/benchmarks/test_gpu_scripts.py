"""The GPU benchmark scripts run end to end on CPU (--smoke: Triton's interpreter, tiny shapes), so a mistake in them
shows here rather than on a GPU whose time is scarce. Nothing they time here means anything."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("triton")


def smoke(script, *args, out):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args, "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "failed" not in r.stdout, r.stdout
    return r.stdout


def test_kernels_benchmark_smoke(tmp_path):
    smoke("kernels.py", "--graph", "--profile", "--deterministic", out=tmp_path)
    (report,) = tmp_path.glob("kernels_*.json")
    result = json.loads(report.read_text())
    assert result["device"] == "CPU smoke check" and report.name == "kernels_CPU_smoke_check_bf16.json"
    rows = result["rows"]
    variants = {(r["op"], r["variant"], r["mode"]) for r in rows}
    from tost_edge.ops.triton import causal_tssa as ct, tssa as tt
    others = (("tssa", "triton-passes" if tt.RESIDENT else "triton-resident"),
              ("causal_tssa", "triton-three-pass" if ct.FUSED else "triton-fused"),   # the scheme not chosen
              ("causal_tssa", "triton-walk" if ct.TILED else "triton-tiled"))        # the walk not chosen
    for op, other in others:
        for variant in ("triton", other, "eager", "triton-graph", f"{other}-graph"):
            for mode in ("fwd", "fwd+bwd"):
                assert (op, variant, mode) in variants
    assert ("causal_linear_attention", "triton-graph", "fwd+bwd") in variants
    for op in ("tssa", "causal_tssa"):                  # --deterministic
        assert (op, "triton-deterministic", "fwd+bwd") in variants and (op, "triton-deterministic-graph", "fwd") in \
            variants
    assert all(r["ms"] > 0 for r in rows if r["variant"] != "eager")
    copy = result["copy_GBps"]        # each row's share of the measured copy rate, beside the datasheet's
    assert all(abs(r["of_copy"] * copy - r["GB/s"]) <= 1e-6 * r["GB/s"] for r in rows if r["ms"] == r["ms"])
    # which scheme each TSSA variant ran (the resident kernels fall back to the passes where they must)
    ran = {r["variant"]: r["ran"]["forward"] for r in rows if r["op"] == "tssa" and r["mode"] == "fwd" and "ran" in r}
    assert ran["triton-resident" if not tt.RESIDENT else "triton"] == "resident", ran
    tuned = [r["ran"]["tuned"] for r in rows if r["op"] == "tssa" and r.get("ran", {}).get("forward") == "passes"]
    assert tuned and set(tuned[0]) == {"sumsq", "pi", "out", "1", "2", "3"} and "TILE" in tuned[0]["pi"], tuned


def test_sweep_smoke(tmp_path):
    smoke("sweep.py", out=tmp_path)
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert set(result["best"]) == {"causal_tssa", "causal_linear_attention", "tssa"}
    tried = {k for r in result["rows"] for k in r}
    # every stage, whichever scheme the interpreter's timings favoured (the walks' and CHUNKED's)
    assert {"BWD_WARPS", "TILED_WARPS", "CHUNKED_TOKENS", "CHUNKED_STAGES", "RESIDENT", "RESIDENT_BWD_TILE", "SPLIT",
            "fwd_bwd_graph_ms", "ran"} <= tried
    # one op swept again in the same folder replaces that op's rows and keeps the others' results
    smoke("sweep.py", "--ops", "causal_linear_attention", out=tmp_path)
    again = json.loads((tmp_path / "sweep.json").read_text())
    assert set(again["best"]) == {"causal_tssa", "causal_linear_attention", "tssa"}
    count = lambda rows, op: sum(r["op"].split()[0] == op for r in rows)  # noqa: E731
    for op in ("causal_tssa", "causal_linear_attention", "tssa"):
        assert count(again["rows"], op) == count(result["rows"], op) > 0
    # what it chose is a valid set of launch settings, for the card it ran on
    from tost_edge.ops.triton import settings
    table, device, _ = settings.check(tmp_path / "sweep.json")
    assert device == "CPU smoke check" and table == again["best"]


def test_kernels_benchmark_no_other_leaves_out_the_unchosen_scheme(tmp_path):
    smoke("kernels.py", "--no-other", out=tmp_path)
    (report,) = tmp_path.glob("kernels_*.json")
    variants = {r["variant"] for r in json.loads(report.read_text())["rows"]}
    assert "triton" in variants and "eager" in variants
    assert not {"triton-resident", "triton-passes", "triton-fused", "triton-three-pass"} & variants


def test_kernels_benchmark_ops_chooses_the_rows(tmp_path):
    smoke("kernels.py", "--ops", "causal", "--only", "T7 H2", "--no-other", "--packed", out=tmp_path)
    (report,) = tmp_path.glob("kernels_*.json")
    rows = json.loads(report.read_text())["rows"]
    assert {r["op"] for r in rows} == {"causal_tssa", "causal_linear_attention"}
    for op in ("causal_tssa", "causal_linear_attention"):          # --packed: the batch as documents of one row
        for variant in ("triton-packed", "triton-packed-mixed", "triton-padded-mixed"):
            assert {(op, variant, mode) for mode in ("fwd", "fwd+bwd")} <= {(r["op"], r["variant"], r["mode"])
                                                                           for r in rows}


def test_kernels_benchmark_packed_tssa_rows(tmp_path):
    smoke("kernels.py", "--ops", "tssa", "--no-other", "--packed", out=tmp_path)
    (report,) = tmp_path.glob("kernels_*.json")
    rows = {(r["op"], r["variant"], r["mode"]) for r in json.loads(report.read_text())["rows"]}
    assert {("tssa", v, m) for v in ("triton-packed", "triton-packed-mixed") for m in ("fwd", "fwd+bwd")} <= rows


def test_ncu_driver_smoke():
    """profile_ncu.py applies the settings it is given (the resident kernels run) and names a misspelt one."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_ncu.py"), *args, "--smoke"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    r = run("tssa", "--set", "RESIDENT=true", "--calls", "1")
    assert r.returncode == 0 and "ran resident / resident" in r.stdout, r.stdout + r.stderr[-2000:]
    r = run("tssa", "--set", "RESIDNT=true")
    assert r.returncode == 2 and "tssa.RESIDNT is not a launch setting (did you mean RESIDENT?)" in r.stderr


@pytest.mark.parametrize("script,rc", [
    ('echo "===== 3 passed in 1.2s ====="; sleep 60', 0),             # summary, then no exit: stopped, passed
    ('echo "===== 1 failed, 2 passed in 1.2s ====="; sleep 60', 1),   # the same with a failure
    ('echo "===== 2 passed in 1.2s ====="; exit 3', 3),               # exits: its own status
    ("echo collecting; sleep 60", 124),                               # no summary by TEST_LIMIT
], ids=["hang-after-pass", "hang-after-failure", "exit", "time-limit"])
def test_gpu_tests_stop_after_the_summary(tmp_path, script, rc):
    """run_gpu.sh's test step does not wait out its limit when pytest hangs after printing its summary, reports the
    summary's verdict, and leaves no process behind."""
    import time
    marker = f"tost-edge-{tmp_path.name}"
    cmd = (f"source {ROOT}/benchmarks/run_until_summary.sh; TEST_LIMIT=6 SUMMARY_GRACE=1 "
           f"run_until_summary {tmp_path}/log bash -c '{script}' {marker}; echo rc=$?")
    t0 = time.monotonic()
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60).stdout
    assert f"rc={rc}" in out, out
    assert time.monotonic() - t0 < (15 if rc == 124 else 8)
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left running: {left}"


def test_train_step_smoke(tmp_path):
    smoke("train_step.py", "--checkpointing", out=tmp_path)
    result = json.loads((tmp_path / "train_step_CPU_smoke_check.json").read_text())
    rows = {(r["model"], r["variant"]): r for r in result["rows"]}
    variants = {("LM", v) for v in ("softmax (SDPA)", "ToST, torch", "ToST, Triton", "linear attention, Triton")} | \
        {("vision", v) for v in ("softmax ViT (SDPA)", "ToST, torch", "ToST, Triton")}
    assert set(rows) == variants | {(m, f"{v}, checkpointed") for m, v in variants}
    assert all(r["checkpointed"] == r["variant"].endswith("checkpointed") for r in rows.values())
    assert all(r["step_ms"] > 0 and r["items_per_s"] > 0 for r in rows.values())
    assert rows[("LM", "softmax (SDPA)")]["speed_vs_first"] == 1.0


def test_train_step_smoke_on_packed_documents(tmp_path):
    smoke("train_step.py", "--packed", out=tmp_path)
    rows = json.loads((tmp_path / "train_step_CPU_smoke_check.json").read_text())["rows"]
    packed = {r["variant"] for r in rows if r["model"] == "LM packed"}
    assert packed == {"ToST, Triton", "linear attention, Triton"}, packed
    assert all(r["step_ms"] > 0 and r["speed_vs_unpacked"] > 0 for r in rows if r["model"] == "LM packed")


def test_sweep_chooses_by_the_graph_timing(monkeypatch):
    """Plain timings carry the host's noise; the CUDA-graph one chooses, the plain one only where capture failed."""
    import torch
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sweep
    from tost_edge.ops.triton import settings
    # (fwd, fwd+bwd plain, fwd+bwd from a graph) per CHUNK: 32 is fastest plain, 64 from a graph
    timings = {32: (0.1, 0.5, 0.9), 64: (0.1, 0.8, 0.4)}
    chunk = lambda: settings.current()["causal_linear_attention"]["CHUNK"]  # noqa: E731
    monkeypatch.setattr(sweep, "timed", lambda fn, inputs: timings[chunk()])
    before = settings.current()
    best = sweep.sweep("la", "causal_linear_attention", [[{"CHUNK": 32}, {"CHUNK": 64}]], lambda: torch.ones(2), [], [])
    assert best == {"CHUNK": 64} and settings.current() == before
    timings[64] = (0.1, 0.8, float("nan"))                     # no graph for 64: its plain time competes
    timings[32] = (0.1, 0.5, float("nan"))
    assert sweep.sweep("la", "causal_linear_attention", [[{"CHUNK": 32}, {"CHUNK": 64}]], lambda: torch.ones(2), [],
                       []) == {"CHUNK": 32}


def test_sweep_skips_the_stages_of_the_scheme_it_did_not_choose(monkeypatch):
    """A stage given as (configs, applies) runs only where applies(the best settings so far) holds: CHUNKED's chunk
    lengths after it won, the walks' settings after they did."""
    import torch
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sweep
    from tost_edge.ops.triton import settings
    timed = []

    def timing(fn, inputs):
        cfg = settings.current()["causal_tssa"]
        timed.append((cfg["CHUNKED"], cfg["CHUNKED_TOKENS"], cfg["PROGRAMS"]))
        return (0.1, 0.5, 0.2 if cfg["CHUNKED"] else 0.3)          # CHUNKED wins from a graph
    monkeypatch.setattr(sweep, "timed", timing)
    stages = [sweep.grid(CHUNKED=[False, True]), (sweep.grid(CHUNKED_TOKENS=[32, 64]), sweep.chunked),
              (sweep.grid(PROGRAMS=[1024, 2048]), sweep.walks)]
    best = sweep.sweep("ct", "causal_tssa", stages, lambda: torch.ones(2), [], [])
    assert best == {"CHUNKED": True, "CHUNKED_TOKENS": 32}
    programs = settings.current()["causal_tssa"]["PROGRAMS"]
    assert timed == [(False, 64, programs), (True, 64, programs), (True, 32, programs), (True, 64, programs)]
    assert [c for c in sweep.CAUSAL_STAGES if isinstance(c, tuple)], "the causal stages name their scheme"


def test_host_time_smoke(tmp_path):
    out = smoke("host_time.py", "--ops", "tssa", "causal_linear_attention", out=tmp_path)
    result = json.loads((tmp_path / "host_time.json").read_text())
    assert set(result["ops"]) == {"tssa", "causal_linear_attention"}
    for r in result["ops"].values():
        assert 0 < r["host_us"] <= r["wall_us"] and r["top"] and "tost_edge" in r["own_us_by_package"]
        assert 0 < r["host_us_launches_stubbed"] < r["host_us"]      # (the interpreter runs the kernels on the host)
    assert "host-bound" in out or "GPU-bound" in out


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the stand-in driver is built with gcc")
def test_host_time_through_the_stand_in_driver(tmp_path):
    """Without a GPU or the interpreter: each launch takes Triton's real path (binder, cache, compiled C launcher,
    kernels built for sm_90) to a stand-in libcuda that counts them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_time.py"), "--stand-in", "--small", "--calls",
                        "3", "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "host_time.json").read_text())
    assert result["device"].startswith("stand-in driver as NVIDIA H100")
    # forward + backward: causal TSSA's fused walks 1 + 1; linear attention 1 + 2 (d q; d k, d v); TSSA at 9
    # tokens: the resident forward (one wave on an H100) + the backward's 3 passes
    launches = {op: row["triton_launches"] for op, row in result["ops"].items()}
    assert launches == {"causal_tssa": 2, "causal_linear_attention": 3, "tssa": 4}, launches
    for row in result["ops"].values():
        assert 0 < row["host_us_launches_stubbed"] and 0 < row["host_us"]
