"""Parity with the official ToST code (github RobinWu218/ToST), where a checkout is available:
TOST_OFFICIAL_DIR must hold tost_vision/tost.py (or tost.py; needs timm) and tost_lang/model_TSSA.py
(or model_TSSA.py). Official models are built, their state dicts loaded strictly into ours, outputs compared."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from tost_edge import models

OFFICIAL = os.environ.get("TOST_OFFICIAL_DIR")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="set TOST_OFFICIAL_DIR to a RobinWu218/ToST checkout")


def load(*names):
    for name in names:
        path = Path(OFFICIAL) / name
        if path.exists():
            spec = importlib.util.spec_from_file_location(path.stem + "_official", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            return mod
    pytest.skip(f"none of {names} in {OFFICIAL}")


@pytest.mark.parametrize("name", ["tost_cab_tiny_12_p16", "tost_cab_small_24_p8"])
def test_vision_matches_official(name, tmp_path):
    pytest.importorskip("timm")
    official = load("tost_vision/tost.py", "tost.py")
    torch.manual_seed(0)
    ref = getattr(official, name)().eval()
    for m in ref.modules():  # non-trivial layer scales and norms, so every parameter matters
        if hasattr(m, "gamma1") and isinstance(m.gamma1, torch.nn.Parameter):
            torch.nn.init.uniform_(m.gamma1, 0.5, 1.0)
            torch.nn.init.uniform_(m.gamma2, 0.5, 1.0)
    torch.save({"model": ref.state_dict()}, tmp_path / "ckpt.pth")
    from tost_edge.models.io import load_checkpoint
    ours = load_checkpoint(models.create(name).eval(), tmp_path / "ckpt.pth")  # strict=True
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_lm_matches_official(tmp_path):
    official = load("tost_lang/model_TSSA.py", "model_TSSA.py")
    cfg = dict(block_size=64, vocab_size=256, n_layer=2, n_head=4, n_embd=64, bias=True, dropout=0.0)
    torch.manual_seed(0)
    ref = official.GPT(official.GPTConfig(**cfg, TSSA=True)).eval()
    with torch.no_grad():
        for blk in ref.transformer.h:
            blk.gamma1.uniform_(0.5, 1.0)
            blk.gamma2.uniform_(0.5, 1.0)
            blk.attn.denom_bias.normal_(0, 0.1)
    torch.save({"model": ref.state_dict()}, tmp_path / "ckpt.pt")
    from tost_edge.models.io import load_checkpoint
    ours = load_checkpoint(models.create("tost_lm_tiny", block_size=64).eval(), tmp_path / "ckpt.pt")
    idx = torch.randint(0, 256, (2, 50))
    with torch.no_grad():
        ours_logits = ours(idx)
        for t in (1, 17, 50):  # the official forward returns the last position's logits
            ref_logits, _ = ref(idx[:, :t])
            torch.testing.assert_close(ours_logits[:, t - 1], ref_logits[:, 0], rtol=1e-4, atol=1e-5)
