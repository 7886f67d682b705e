import json
import subprocess
import sys

import pytest

from tost_edge.cli import main


def test_models_lists_registry(capsys):
    assert main(["models", "--kind", "lm"]) == 0
    out = capsys.readouterr().out
    assert "tost_lm_base" in out and "110.47M" in out


def test_check_env_runs(capsys):
    assert main(["check-env"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "tensorrt" in out


def test_unknown_model_is_a_clear_error(capsys, tmp_path):
    assert main(["quickstart", "--model", "nope", "--tokens", "2", "--bundle", str(tmp_path / "q")]) == 2
    assert "expected a registry name" in capsys.readouterr().err


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "tost_edge.cli", "--help"], capture_output=True, text=True).stdout
    assert "examples:" in out and "quickstart" in out


def test_triton_settings_checks_a_tuned_file(capsys, tmp_path):
    pytest.importorskip("triton")
    from tost_edge.ops.triton import settings
    before, measured = settings.current(), settings._measured_on
    tuned = tmp_path / "sweep.json"
    tuned.write_text(json.dumps({"device": "NVIDIA H200", "best": {"causal_tssa": {"UNROLL": 2}}}))
    try:
        assert main(["triton-settings", "--tuned", str(tuned), "--changed"]) == 0
    finally:
        settings.apply(before)
        settings._measured_on = measured
    out = capsys.readouterr().out
    assert "UNROLL" in out and "FUSED" not in out and "measured on: NVIDIA H200" in out
    tuned.write_text(json.dumps({"causal_tssa": {"UNROL": 8}}))
    assert main(["triton-settings", "--tuned", str(tuned)]) == 2
    assert "causal_tssa.UNROL is not a launch setting (did you mean UNROLL?)" in capsys.readouterr().err
    assert settings.current() == before


def test_export_takes_a_saved_folder_with_its_config(capsys, tmp_path):
    """A model trained at another size than the registry's (one layer, block 64) exports from its saved folder."""
    from tost_edge import models
    from tost_edge.models import io
    io.save(models.create("tost_lm_tiny", n_layer=1, block_size=64), tmp_path / "trained")
    assert main(["export", "tost_lm_tiny", "--checkpoint", str(tmp_path / "trained"), "-o",
                 str(tmp_path / "m.onnx")]) == 0
    assert main(["export", "tost_lm_small", "--checkpoint", str(tmp_path / "trained"), "-o",
                 str(tmp_path / "n.onnx")]) == 2
    assert "config.json describes 'tost_lm_tiny', not 'tost_lm_small'" in capsys.readouterr().err


def test_triton_settings_without_triton_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)     # import triton raises ImportError
    assert main(["triton-settings"]) == 2
    assert "Triton is not installed here" in capsys.readouterr().err
