import pytest

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Fresh kernel buffers start as NaN, so a kernel that reads memory it never wrote fails (fla's trick)."""
    from tost_edge.ops.triton import utils
    monkeypatch.setattr(utils, "NAN_FILL", True)
