import pytest
import torch

from tost_edge import models
from tost_edge.export import export_onnx


@pytest.fixture(scope="session")
def lm_bundles(tmp_path_factory):
    """name -> (model, bundle dir), exported once per test session."""
    out = {}
    for name in ["tost_lm_tiny", "linear_lm_tiny", "gpt_lm_tiny"]:
        torch.manual_seed(0)
        model = models.create(name).eval()
        path = tmp_path_factory.mktemp(name) / "bundle"
        export_onnx(model, path, graph="stream", steps=8)
        out[name] = (model, path)
    return out
