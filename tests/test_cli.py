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
    tuned.write_text(json.dumps({"device": "NVIDIA H200", "best": {"causal_tssa": {"UNROLL": 8}}}))
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
