"""Host helpers of the kernels: the device launches run on."""
import types

import torch

from tost_edge.ops.triton import utils


def test_a_launch_runs_on_its_tensors_gpu_not_the_current_one(monkeypatch):
    entered = []

    class Device:   # stands in for torch.cuda.device: records the device made current
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Device)
    for device in ("cuda:1", "cuda:0", "cuda", "cpu"):
        with utils.device_guard(types.SimpleNamespace(device=torch.device(device))):
            pass
    assert entered == [1]                      # only cuda:1 is not current already


def test_the_guard_takes_the_first_tensor_argument(monkeypatch):
    seen = []
    monkeypatch.setattr(utils, "device_guard", lambda t: seen.append(t) or utils.contextlib.nullcontext())

    @utils.on_input_device
    def launch(gy, w, plan):
        return plan

    w = torch.zeros(2)
    assert launch(None, w, [1]) == [1] and seen == [w]
