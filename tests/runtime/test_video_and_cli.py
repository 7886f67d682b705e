import json

import numpy as np
import pytest
import torch

from tost_edge import models
from tost_edge.cli import main
from tost_edge.export import export_onnx
from tost_edge.runtime import Session
from tost_edge.runtime.video import frames_from, synthetic_frames, to_model_frame


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("tost_video_test").eval()
    path = tmp_path_factory.mktemp("video") / "bundle"
    export_onnx(model, path, graph="stream", steps=4)
    return model, path


def test_video_stream_equals_pytorch_over_frames(video):
    model, path = video
    frames = np.stack(list(synthetic_frames(32, 12)))
    stream = Session(path).open_stream()
    got = np.stack([stream.step(f) for f in frames])
    with torch.no_grad():
        want = model(torch.from_numpy(frames)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_video_prefill_then_step(video):
    _, path = video
    frames = np.stack(list(synthetic_frames(32, 6, seed=3)))
    sess = Session(path)
    a, b = sess.open_stream(), sess.open_stream()
    la = np.concatenate([a.prefill(frames[:4]), np.stack([a.step(f) for f in frames[4:]])])
    lb = np.stack([b.step(f) for f in frames])
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)


def test_frame_sources(tmp_path):
    arr = (np.random.default_rng(0).random((3, 40, 50, 3)) * 255).astype(np.uint8)
    frames = list(frames_from(arr, 32))
    assert len(frames) == 3 and frames[0].shape == (3, 32, 32) and frames[0].dtype == np.float32
    with pytest.raises(ValueError, match=r"source: expected frames \[T, H, W, 3\]"):
        list(frames_from(arr[0], 32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(frames_from(tmp_path / "missing.mp4", 32))
    with pytest.raises(ValueError, match="expected 3 colour channels"):
        to_model_frame(np.zeros((8, 8, 4)), 8)
    pil = pytest.importorskip("PIL.Image")
    for i in range(2):
        pil.fromarray(arr[i]).save(tmp_path / f"{i:03d}.png")
    assert len(list(frames_from(tmp_path, 32))) == 2


def test_bad_frame_shape(video):
    stream = Session(video[1]).open_stream()
    with pytest.raises(ValueError, match=r"frame: expected shape \[3, 32, 32\], got \(3, 16, 16\)"):
        stream.step(np.zeros((3, 16, 16), np.float32))


def test_cli_stream_video(video, capsys):
    assert main(["stream-video", str(video[1]), "--frames", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frames"] == 5 and res["fps"] > 0 and len(res["predictions"]) == 5


def test_cli_stream_video_batches_cameras_as_if_alone(video, capsys):
    assert main(["stream-video", str(video[1]), "--frames", "4", "--streams", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["streams"] == 3 and res["frames"] == 4 and len(res["predictions_by_stream"]) == 3
    session = Session(video[1])
    for seed, got in enumerate(res["predictions_by_stream"]):
        stream = session.open_stream()
        want = [int(np.argmax(stream.step(f))) for f in synthetic_frames(32, 4, seed=seed)]
        assert got == want, seed
    assert main(["stream-video", str(video[1]), "--streams", "0"]) == 2
    assert "--streams: expected at least 1, got 0" in capsys.readouterr().err


def test_cli_run_and_bench(lm_bundles, tmp_path, capsys):
    _, path = lm_bundles["tost_lm_tiny"]
    assert main(["run", str(path), "--prompt", "Hi", "--max-new-tokens", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["tokens"]) == 5 and res["step_ms_p50"] > 0
    assert main(["bench", str(path), "--positions", "0,16", "--steps", "3", "--json", str(tmp_path / "b.json")]) == 0
    assert "decode latency by position" in capsys.readouterr().out
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["position"] for r in data["rows"]] == [0, 16]
    assert data["rows"][1]["state_bytes_per_stream"] == data["rows"][0]["state_bytes_per_stream"]


def test_cli_run_on_missing_bundle(tmp_path, capsys):
    assert main(["run", str(tmp_path)]) == 2
    assert "expected a stream bundle folder with manifest.json" in capsys.readouterr().err


def test_quickstart_command(tmp_path, capsys):
    assert main(["quickstart", "--model", "tost_lm_tiny", "--bundle", str(tmp_path / "q"), "--tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and (tmp_path / "q" / "manifest.json").exists()


def test_bench_refuses_a_video_bundle(video, capsys):
    assert main(["bench", str(video[1]), "--positions", "0", "--steps", "1"]) == 2
    assert "use `tost-edge stream-video`" in capsys.readouterr().err


def test_fp16_bundle_streams_close_to_pytorch(tmp_path):
    torch.manual_seed(0)
    model = models.create("tost_lm_tiny").eval()
    export_onnx(model, tmp_path / "b16", graph="stream", dtype="fp16", steps=8)
    stream = Session(tmp_path / "b16").open_stream()
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    logits = np.concatenate([stream.prefill(tokens[:5]), np.stack([stream.step(t) for t in tokens[5:]])])
    with torch.no_grad():
        want = model(torch.tensor([tokens]))[0].numpy()
    assert logits.dtype == np.float32
    assert np.abs(logits - want).max() / np.abs(want).max() < 2e-2
    assert all(v.dtype == np.float32 for k, v in stream.state.items())
