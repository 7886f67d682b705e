import os

import pytest

torch = pytest.importorskip("torch")

# Triton kernels run on the GPU when there is one, else in Triton's CPU interpreter (set before triton.jit runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_close(name, ref, out, ratio=1e-5, atol=0.0):
    """fla-style check: relative RMSE of the difference against the reference, plus a max-abs bound. A failure names
    where the largest difference lies (its index, the reference and the output there)."""
    ref, out = ref.double(), out.double()
    diff = (ref - out).flatten()
    rmse = diff.square().mean().sqrt().item() if diff.numel() else 0.0
    base = ref.flatten().square().mean().sqrt().item() if diff.numel() else 0.0
    maxabs = diff.abs().max().item() if diff.numel() else 0.0
    assert not torch.isnan(out).any(), f"{name}: NaN in output"

    def worst() -> str:
        i = int(diff.abs().argmax())
        at = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), ref.shape)) if ref.dim() else ()
        return f"largest at {list(at)} of {tuple(ref.shape)}: reference {ref.flatten()[i].item():.6g}, got " \
               f"{out.flatten()[i].item():.6g}"
    assert rmse <= ratio * base + atol, \
        f"{name}: rel-RMSE {rmse / max(base, 1e-30):.3e} > {ratio:.1e} (max abs {maxabs:.3e}; {worst()})"
    if atol:
        assert maxabs <= atol * 10 + ratio * 10 * ref.abs().max().item(), f"{name}: max abs {maxabs:.3e} ({worst()})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
