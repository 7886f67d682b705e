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


class SpillingKernel:
    """Stands in for a jitted kernel: its warmup 'compiles' to a kernel spilling `spills` bytes a thread under a
    register cap, none without one."""

    def __init__(self, spills):
        self.spills, self.warmups = spills, []

    def warmup(self, *args, grid, **options):
        self.warmups.append(options)
        spills = self.spills if "maxnreg" in options else 0
        return types.SimpleNamespace(_init_handles=lambda: None, n_spills=spills)


def test_a_register_cap_that_spills_too_much_is_dropped(monkeypatch):
    monkeypatch.setattr(utils, "interpreting", lambda: False)
    monkeypatch.setattr(utils, "_UNSPILLED", {})
    capped = utils.launch_options(8, 128)
    w = torch.zeros(4, dtype=torch.bfloat16)
    light, heavy = SpillingKernel(16), SpillingKernel(56)
    assert utils.unspilled(light, (2,), (w, 7), capped) == capped            # 16 bytes: within the allowance
    assert utils.unspilled(heavy, (2,), (w, 7), capped) == utils.launch_options(8)
    assert utils.unspilled(heavy, (2,), (w, 7), capped, spill=64) == capped
    for _ in range(3):                                                         # decided once per specialisation
        utils.unspilled(heavy, (2,), (w, 7), capped)
    assert len(heavy.warmups) == 2
    utils.unspilled(heavy, (2,), (w.float(), 7), capped)                       # another dtype: compiled again
    assert len(heavy.warmups) == 3
    assert utils.unspilled(heavy, (2,), (w, 7), utils.launch_options(8)) == utils.launch_options(8)  # no cap
    assert len(heavy.warmups) == 3
