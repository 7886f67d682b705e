"""Host helpers of the kernels: the device launches run on, autotuned launches."""
import logging
import types

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from tost_edge.ops.triton import utils  # noqa: E402


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


@triton.jit
def _doubled(x, y, n, NB, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, 2 * tl.load(x + i, mask=i < n), mask=i < n)


def test_an_autotuned_kernel_launches_its_chosen_config_directly(monkeypatch):
    """utils.Tuned asks the autotuner once per key (its own key: NB and the tensors' dtypes), then launches the
    chosen config's kernel itself; a new key is tuned again, and each tuning is logged."""
    timed = []

    def bench(kernel_call, quantiles):           # the first config timed at a key is the fastest
        kernel_call()
        timed.append(1)
        return [float(len(timed))] * 3
    configs = [triton.Config({"BLOCK": 32}, num_warps=1), triton.Config({"BLOCK": 64}, num_warps=1)]
    tuned = utils.Tuned(triton.autotune(configs=configs, key=["NB"], do_bench=bench)(_doubled))
    asked = []
    run = tuned.autotuner.run
    monkeypatch.setattr(tuned.autotuner, "run", lambda *a, **k: asked.append(1) or run(*a, **k))
    records = []                     # a logger of its own: no other test's logging settings reach it
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.Logger(utils.log.name, logging.INFO)
    log.addHandler(handler)
    monkeypatch.setattr(utils, "log", log)
    for n, dtype, new_key in [(40, torch.float32, True), (40, torch.float32, False), (50, torch.float32, False),
                              (40, torch.float16, True), (200, torch.float32, True), (40, torch.float32, False)]:
        before = len(asked), len(timed), len(records)
        x = torch.randn(n).to(dtype)
        y = torch.full_like(x, float("nan"))
        NB = 64 if n <= 64 else 256
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n, NB)
        torch.testing.assert_close(y, 2 * x)
        assert (len(asked) - before[0], len(timed) - before[1]) == ((1, 2) if new_key else (0, 0)), (n, dtype)
        assert len(records) - before[2] == int(new_key)
        assert tuned.best_config.kwargs == {"BLOCK": 32}
    assert len(tuned.autotuner.cache) == 3            # the autotuner's keys are Tuned's: NB 64 fp32, fp16; NB 256
    assert "_doubled: autotuned for {'NB': 64}" in records[0].getMessage()


@pytest.mark.parametrize("capability, fast", [((9, 0), True), ((8, 0), True), ((10, 0), True), ((8, 7), False),
                                              ((11, 0), False), ((8, 9), False), ((12, 0), False)],
                         ids=["H100", "A100", "B200", "Orin", "Thor", "L4", "RTX-50"])
def test_fp64_is_leaned_on_only_where_it_runs_at_half_rate(monkeypatch, capability, fast):
    """Causal TSSA's backward sums d S in fp64 on the data-centre parts and in pairs of fp32 elsewhere (Jetson Orin
    and Thor run fp64 at 1/32 to 1/64 of fp32); off NVIDIA GPUs (the interpreter) fp64 is used."""
    props = types.SimpleNamespace(major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert utils.fast_fp64(torch.device("cuda", 0)) is fast
    assert utils.fast_fp64(torch.device("cpu")) and utils.fast_fp64(None)
