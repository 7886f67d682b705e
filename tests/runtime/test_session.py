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


class Counting:
    """A backend that counts its graph calls and takes at most max_batch streams a call, as an engine would."""

    def __init__(self, backend, max_batch=None):
        self.backend, self.max_batch, self.calls = backend, max_batch, []

    def run(self, graph, feeds):
        batch = len(feeds["pos"])
        assert self.max_batch is None or batch <= self.max_batch, f"{graph}: {batch} streams in one call"
        self.calls.append((graph, batch, feeds[next(iter(feeds))].shape))
        return self.backend.run(graph, feeds)


@pytest.mark.parametrize("name", ["tost_lm_tiny", "gpt_lm_tiny"])
def test_prefill_batch_equals_solo_prefills(lm_bundles, name):
    _, path = lm_bundles[name]
    sess = Session(path)
    rng = np.random.default_rng(2)
    lengths = [70, 1, 70, 64, 5, 128]          # chunks of 64: full chunks batch, equal tails batch
    prompts = [rng.integers(0, 256, n) for n in lengths]
    sess.backend = counting = Counting(sess.backend)
    streams = [sess.open_stream() for _ in prompts]
    got = sess.prefill_batch(streams, prompts)
    assert sorted(c[1] for c in counting.calls) == [1, 1, 1, 2, 4], counting.calls  # 9 calls one by one
    solo_sess = Session(path)
    for s, p, g in zip(streams, prompts, got):
        solo = solo_sess.open_stream()
        np.testing.assert_allclose(g, solo.prefill(p), rtol=1e-4, atol=1e-5)
        assert s.position == solo.position == len(p) and s.stats.prefill_tokens == len(p)
        for k in solo.state:
            np.testing.assert_allclose(s.state[k], solo.state[k], rtol=1e-4, atol=1e-5)


def test_prefill_plan_covers_each_prompt_in_order_in_few_calls():
    from tost_edge.runtime.session import prefill_plan
    rng = np.random.default_rng(3)
    for lengths in [[5], [64], [130], [0, 3], [16] * 9] + [list(rng.integers(0, 200, rng.integers(1, 40)))
                                                          for _ in range(50)]:
        plan = prefill_plan(lengths, 64)
        got = [0] * len(lengths)
        for n, members in plan:
            assert 1 <= n <= 64 and members == sorted(set(members))
            for i in members:
                got[i] += n
        assert got == lengths
        full = max(lengths) // 64
        tails = {n % 64 for n in lengths} - {0}
        assert len(plan) == full + min(len(tails), len({b for t in tails for b in range(6) if t >> b & 1}))
    assert prefill_plan([70], 64) == [(64, [0]), (6, [0])]       # one prompt: no call more than its chunks
    assert prefill_plan([3, 5, 6, 7], 64) == [(4, [1, 2, 3]), (2, [0, 2, 3]), (1, [0, 1, 3])]


def test_calls_hold_at_most_the_backends_batch(lm_bundles):
    _, path = lm_bundles["tost_lm_tiny"]
    sess = Session(path)
    prompts = [np.arange(1, 2 + i % 3) for i in range(7)]
    whole = [sess.open_stream() for _ in prompts]
    want = sess.prefill_batch(whole, prompts)
    want_step = sess.step_batch(whole, [3] * 7)
    sess.backend = counting = Counting(sess.backend, max_batch=2)
    parts = [sess.open_stream() for _ in prompts]
    got = sess.prefill_batch(parts, prompts)
    got_step = sess.step_batch(parts, [3] * 7)
    assert [c[1] for c in counting.calls] == [2, 2, 2, 2, 1] + [2, 2, 2, 1]  # calls of 2 tokens, 1; then a step
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_step, want_step, rtol=1e-5, atol=1e-6)


def test_batches_refuse_bad_input_and_leave_streams_as_they_were(lm_bundles):
    sess = Session(lm_bundles["tost_lm_tiny"][1])
    a, b = sess.open_stream(), sess.open_stream()
    with pytest.raises(ValueError, match=r"prompts\[1\]: tokens: expected ids in \[0, 256\), got values 1..999"):
        sess.prefill_batch([a, b], [[1, 2], [1, 999]])
    with pytest.raises(ValueError, match="a stream appears twice in one batch"):
        sess.prefill_batch([a, a], [[1], [2]])
    with pytest.raises(ValueError, match=r"inputs: expected one per stream \(2\), got 1"):
        sess.step_batch([a, b], [1])
    with pytest.raises(ValueError, match=r"inputs\[1\]: token: expected an id in \[0, 256\), got 999"):
        sess.step_batch([a, b], [1, 999])
    with pytest.raises(ValueError, match=r"inputs: expected one token id per stream, got shape \(2, 2\)"):
        sess.step_batch([a, b], [[1, 2], [3, 4]])
    assert a.position == b.position == 0
    sched = sess.scheduler()
    for prompt, n, match in (([], 4, "prompt: expected at least one token"), ([300], 4, "tokens: expected ids"),
                             ([1], 0, "max_new_tokens: expected at least 1, got 0")):
        with pytest.raises(ValueError, match=match):
            sched.submit(prompt, n)
    assert not sched.pending


@pytest.mark.parametrize("name", ["tost_lm_tiny", "gpt_lm_tiny"])
def test_prefill_budget_goes_in_pieces_while_others_decode(lm_bundles, name):
    _, path = lm_bundles[name]
    sess = Session(path)
    sess.backend = counting = Counting(sess.backend)
    sched = sess.scheduler(max_prefill_tokens=64)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 256, n) for n in (120, 5, 3, 70)]
    reqs = [sched.submit(p, 6, temperature=0.8, top_k=20, seed=i) for i, p in enumerate(prompts)]
    fed, emitted = [], []
    while sched.busy:
        before = len(counting.calls)
        emitted.append({i for i, _ in sched.tick()})
        fed.append(sum(b * shape[1] for g, b, shape in counting.calls[before:] if g == "prefill"))
    assert fed[:4] == [64, 64, 64, 6] and max(fed[4:]) == 0         # 120 = 64 + 56; 56 + 5 + 3; 64; 6
    assert emitted[:4] == [set(), {0, 1, 2}, {0, 1, 2}, {0, 1, 2, 3}]  # 0, 1, 2 decode while 3 prefills
    for i, req in enumerate(reqs):
        solo = list(Session(path).open_stream().generate(prompts[i], 6, temperature=0.8, top_k=20, seed=i))
        assert req.tokens == solo, i
    with pytest.raises(PositionRangeError):                           # refused whole, not after a few pieces
        sched.submit(np.zeros(129, np.int64), 1)
    with pytest.raises(ValueError, match="max_prefill_tokens: expected a positive int or None, got 0"):
        sess.scheduler(max_prefill_tokens=0)


def test_shape_outside_an_engines_profile_is_a_clear_error():
    from tost_edge.runtime.backends.tensorrt_backend import check_profile
    check_profile("step", "tokens", (8,), (1,), (8,))
    with pytest.raises(ValueError, match=r"step engine: input tokens has shape \(9,\), outside the engine's "
                                         r"profile \(1,\) \.\. \(8,\); rebuild .* --max-batch N"):
        check_profile("step", "tokens", (9,), (1,), (8,))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3\), outside"):
        check_profile("prefill", "state_in.0.sum_wsq", (1, 2, 3), (1, 2), (8, 2))


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
