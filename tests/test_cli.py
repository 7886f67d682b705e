import json
import subprocess
import sys

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
