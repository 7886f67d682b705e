import subprocess
import sys

import numpy as np
import pytest
import torch

from tost_edge.runtime import PositionRangeError, Session, SnapshotError

NAMES = ["tost_lm_tiny", "linear_lm_tiny", "gpt_lm_tiny"]


def torch_greedy(model, prompt, n):
    idx = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(idx)[0, -1].argmax())
            out.append(nxt)
            idx = torch.cat([idx, torch.tensor([[nxt]])], 1)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_equals_pytorch(lm_bundles, name):
    model, path = lm_bundles[name]
    prompt = [5, 17, 99, 3, 250, 1, 1, 42]
    got = list(Session(path).open_stream().generate(prompt, max_new_tokens=24, temperature=0))
    assert got == torch_greedy(model, prompt, 24)


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_step_equals_step_only(lm_bundles, name):
    _, path = lm_bundles[name]
    sess = Session(path)
    tokens = np.random.default_rng(0).integers(0, 256, 70)  # crosses the 64-token prefill chunk
    a = sess.open_stream()
    la = a.prefill(tokens)
    b = sess.open_stream()
    lb = np.stack([b.step(t) for t in tokens])
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
    for k in a.state:
        np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-4, atol=1e-5)
    assert a.position == b.position == 70


@pytest.mark.parametrize("name", ["tost_lm_tiny", "gpt_lm_tiny"])
def test_64_interleaved_streams_equal_solo_runs(lm_bundles, name):
    _, path = lm_bundles[name]
    sess = Session(path)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 256, rng.integers(1, 6)) for _ in range(64)]
    lengths = [int(rng.integers(3, 9)) for _ in range(64)]
    sched = sess.scheduler(max_batch=64)
    reqs = []
    # streams join over the first ticks and leave when done
    for i in range(64):
        reqs.append(sched.submit(prompts[i], lengths[i], temperature=0.8, top_k=20, seed=i))
        if i % 8 == 7:
            sched.tick()
    list(sched.run())
    for i, req in enumerate(reqs):
        solo = list(sess.open_stream().generate(prompts[i], lengths[i], temperature=0.8, top_k=20, seed=i))
        assert req.tokens == solo, i


def test_batched_step_logits_equal_solo(lm_bundles):
    _, path = lm_bundles["tost_lm_tiny"]
    sess = Session(path)
    streams = [sess.open_stream() for _ in range(5)]
    for i, s in enumerate(streams):
        s.prefill(np.arange(i + 1))  # different positions in one batch
    solo = [sess.open_stream() for _ in range(5)]
    for i, s in enumerate(solo):
        s.prefill(np.arange(i + 1))
    batched = sess.step_batch(streams, [7] * 5)
    for i, s in enumerate(solo):
        np.testing.assert_allclose(batched[i], s.step(7), rtol=1e-5, atol=1e-6)


def test_end_of_position_range_is_a_clear_error(lm_bundles):
    _, path = lm_bundles["tost_lm_tiny"]
    stream = Session(path).open_stream()
    stream.prefill(np.zeros(128, np.int64))
    with pytest.raises(PositionRangeError, match=r"position 129 is beyond the model's position range \(block_size=128\)"):
        stream.step(0)


def test_bad_tokens(lm_bundles):
    stream = Session(lm_bundles["tost_lm_tiny"][1]).open_stream()
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 256\), got values 0..300"):
        stream.prefill([0, 300])


def test_snapshot_round_trip(lm_bundles, tmp_path):
    _, path = lm_bundles["tost_lm_tiny"]
    sess = Session(path)
    a = sess.open_stream()
    a.prefill([1, 2, 3, 4])
    a.save_state(tmp_path / "s.snap")
    b = sess.restore_stream(tmp_path / "s.snap")
    assert b.position == 4
    np.testing.assert_array_equal(a.step(9), b.step(9))


def _snap(lm_bundles, tmp_path):
    sess = Session(lm_bundles["tost_lm_tiny"][1])
    s = sess.open_stream()
    s.prefill([1, 2, 3])
    s.save_state(tmp_path / "s.snap")
    return sess, (tmp_path / "s.snap").read_bytes()


@pytest.mark.parametrize("corrupt,match", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
    (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "checksum mismatch"),
    (lambda b: b[: len(b) // 2], "checksum mismatch"),
    (lambda b: b"NOTASNAP" + b[8:], "not a tost-edge state snapshot"),
    (lambda b: b"", "not a tost-edge state snapshot"),
], ids=["last-byte", "payload-byte", "truncated", "magic", "empty"])
def test_corrupted_snapshot_leaves_stream_untouched(lm_bundles, tmp_path, corrupt, match):
    sess, data = _snap(lm_bundles, tmp_path)
    (tmp_path / "bad.snap").write_bytes(corrupt(data))
    stream = sess.open_stream()
    stream.prefill([7, 7])
    before = {k: v.copy() for k, v in stream.state.items()}
    with pytest.raises(SnapshotError, match=match):
        stream.load_state(tmp_path / "bad.snap")
    assert stream.position == 2
    for k in before:
        np.testing.assert_array_equal(stream.state[k], before[k])


def test_snapshot_of_another_model_is_refused(lm_bundles, tmp_path):
    a = Session(lm_bundles["linear_lm_tiny"][1]).open_stream()
    a.prefill([1])
    a.save_state(tmp_path / "lin.snap")
    with pytest.raises(SnapshotError, match="snapshot of model 'linear_lm_tiny'.*expected 'tost_lm_tiny'"):
        Session(lm_bundles["tost_lm_tiny"][1]).restore_stream(tmp_path / "lin.snap")


def test_runtime_does_not_import_torch():
    code = ("import sys, tost_edge.runtime, tost_edge.runtime.backends.onnxruntime_backend, "
            "tost_edge.runtime.backends.tensorrt_backend, tost_edge.runtime.engine_meta, tost_edge.runtime.video; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plugin_bundle_is_refused_by_onnxruntime(tmp_path):
    from tost_edge import models
    from tost_edge.export import export_onnx
    export_onnx(models.create("tost_lm_tiny"), tmp_path / "b", graph="stream", flavor="plugin", check=False)
    with pytest.raises(ValueError, match="onnxruntime runs portable bundles"):
        Session(tmp_path / "b")


def test_cli_run_works_without_torch(lm_bundles):
    """The device-side command path never needs torch: run it with torch made unimportable."""
    _, path = lm_bundles["tost_lm_tiny"]
    code = ("import sys; sys.modules['torch'] = None; from tost_edge.cli import main; "
            f"sys.exit(main(['run', {str(path)!r}, '--prompt-ids', '1,2,3', '--max-new-tokens', '4', '--json']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"tokens"' in r.stdout
