"""Where Triton kernels can run, and allocation helpers shared by the kernels."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time

import torch

log = logging.getLogger(__name__)   # tost_edge.ops.triton.utils: autotuning (INFO)

# Tests set this to fill fresh allocations with NaN, so a kernel that reads memory it never wrote fails loudly.
NAN_FILL = os.environ.get("TOST_EDGE_NAN_FILL", "0") == "1"

# Every launch asks for fused multiply-adds (a * b + c as one FFMA): the kernels' instruction counts and their
# rounding were measured with them. Triton contracts by default up to 3.9 and announces that 3.10 will not
# (TRITON_DEFAULT_FP_FUSION); TRITON_FORCE_DISABLE_FP_FUSION=1 still turns them off.
FUSION = {"enable_fp_fusion": True}


def launch_options(warps: int, maxnreg: int = 0) -> dict:
    """The keyword options of a kernel launch: its warps, fused multiply-adds, and a register cap where maxnreg > 0."""
    return {"num_warps": warps, **FUSION, **({"maxnreg": maxnreg} if maxnreg > 0 else {})}


class Tuned:
    """An autotuned kernel (triton.autotune) launched, once its autotuner has chosen a config for a key, as that
    config's kernel directly: the autotuner's bookkeeping at every launch (dicts of all its arguments, its key) took
    ~10 µs of host time a launch under Triton 3.6, about what the rest of the launch takes (benchmarks/host_time.py
    --stand-in). The key is the autotuner's own: the values of its key arguments and the dtypes of the tensors
    passed positionally. kernel[grid](*args, **kwargs) as with the autotuner; best_config: the config launched last."""

    def __init__(self, autotuner):
        self.autotuner = autotuner
        self.best_config = None
        self._keys = [(autotuner.arg_names.index(k), k) for k in autotuner.keys]
        self._chosen: dict = {}

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        n = len(args)
        key = (*[args[i] if i < n else kwargs.get(name) for i, name in self._keys],
               *[a.dtype for a in args if isinstance(a, torch.Tensor)])
        chosen = self._chosen.get(key)
        if chosen is None:
            start = time.perf_counter()
            result = self.autotuner[grid](*args, **kwargs)     # times the configs at the key's first launch
            config = self.autotuner.best_config
            log.info("%s: autotuned for %s in %.1f s (once a key, a process; on disk where Triton caches): %s",
                     self.autotuner.base_fn.__name__, dict(zip([k for _, k in self._keys], key)),
                     time.perf_counter() - start, config)
            if config.pre_hook is None:                       # (a config's own hook runs through the autotuner)
                self._chosen[key] = (config, config.all_kwargs())
            self.best_config = config
            return result
        self.best_config = chosen[0]
        return self.autotuner.fn[grid](*args, **kwargs, **chosen[1])


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def spilled(compiled) -> int:
    """Bytes a thread of a compiled kernel spills to local memory (0 where this Triton does not say)."""
    try:
        compiled._init_handles()
        return int(getattr(compiled, "n_spills", 0) or 0)
    except Exception:
        return 0


SPILL = 16          # bytes a thread a capped kernel may spill before its cap is dropped (unspilled)
_UNSPILLED: dict = {}


def unspilled(kernel, grid, args, options: dict, spill: int = SPILL) -> dict:
    """The launch options of kernel[grid](*args), without their register cap where the kernel compiled under it
    spills more than `spill` bytes a thread (a cap chosen at one shape can spill at another: wider heads hold more
    a thread). Decided once per kernel, options, tensor dtypes and other arguments; the interpreter takes them as
    they are."""
    if interpreting() or not options.get("maxnreg"):
        return options
    key = (kernel, tuple(sorted(options.items())), spill,
           *[(a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args])
    if key not in _UNSPILLED:
        compiled = kernel.warmup(*args, grid=grid, **options)
        if compiled is not None and spilled(compiled) > spill:
            options = {k: v for k, v in options.items() if k != "maxnreg"}
        _UNSPILLED[key] = options
    return _UNSPILLED[key]


def check_available(*tensors: torch.Tensor) -> None:
    """backend='triton' runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; never falls back."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError("backend='triton': Triton is not installed (pip install tost-edge[triton])") from e
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        from . import settings
        settings.check_device(tensors[0].device)
        return
    if devices == {"cpu"} and interpreting():
        return
    if devices == {"cpu"}:
        raise RuntimeError("backend='triton': tensors are on the CPU; move them to a CUDA GPU, or set "
                           "TRITON_INTERPRET=1 to run the kernels in Triton's (slow) CPU interpreter")
    raise RuntimeError(f"backend='triton': expected all tensors on one CUDA device, got devices {sorted(devices)}")


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(name: str, t: torch.Tensor) -> None:
    """The kernels compute in fp32: a float64 input would come back float64 at fp32 precision, so it is an error."""
    if t.dtype not in KERNEL_DTYPES:
        raise ValueError(f"backend='triton': {name} is {t.dtype}; the kernels take float32, float16 or bfloat16 (they "
                         f"accumulate in float32). For float64, use backend='torch'")


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) inside the block, as it was after it: torch's own ops then take
    their deterministic implementations (index_put_ with accumulation sorts instead of adding atomically)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def device_guard(t):
    """Triton launches on the current CUDA device, not on its arguments' one: with a model on cuda:1 while cuda:0 is
    current, every launch would address another GPU's memory. This makes t's device current where it is not."""
    index = t.device.index                             # None: the current device already
    if t.device.type != "cuda" or index is None or index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(index)


def on_input_device(fn):
    """fn (a host function that launches kernels) run with its first tensor argument's device current; where
    Triton's ptxas cannot target the GPU (Jetson Thor's sm_110 under a Triton that bundles CUDA 12's), the error
    says so and names the fix instead of ending a compiler traceback."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with device_guard(first) if first is not None else contextlib.nullcontext():
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                hint = unknown_target(e)
                if hint is None:
                    raise
                raise RuntimeError(f"backend='triton': {hint} (`tost-edge check-env` checks this)") from e
    return run


def unknown_target(error: Exception) -> str | None:
    """What to do where a compile failed because ptxas does not know the GPU's architecture; None for any other
    error."""
    if type(error).__name__ != "PTXASError":
        return None
    found = re.search(r"Value '(sm_(\d+)(\d)a?)' is not defined for option 'gpu-name'", str(error))
    if found is None:
        return None
    from ...env import triton_target
    return triton_target((int(found.group(2)), int(found.group(3)))) or \
        f"Triton's ptxas cannot compile for {found.group(1)}"


class _SecondDerivative(torch.autograd.Function):
    """Passes gradients through, tied to the op's inputs; differentiating them again raises (see first_order)."""

    @staticmethod
    def forward(ctx, op: str, n: int, *tensors):
        ctx.op = op
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{ctx.op} with backend='triton' has no second derivative (its backward runs Triton "
                           f"kernels): differentiating its gradients again (create_graph=True: double backward, "
                           f"gradient penalties) needs backend='torch'")


def first_order(op: str, grads: tuple, inputs: tuple) -> tuple:
    """An autograd Function's backward results. Where the backward runs with create_graph=True (grad mode on), the
    kernels' gradients would come back as constants, so a second derivative through them would silently miss the
    op's share; they are tied to the inputs instead through a node whose own backward is a clear error."""
    held = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not torch.is_grad_enabled() or not held:
        return grads
    at = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    tied = _SecondDerivative.apply(op, len(at), *[grads[i] for i in at], *held)
    tied = (tied,) if isinstance(tied, torch.Tensor) else tied
    out = list(grads)
    for i, g in zip(at, tied):
        out[i] = g
    return tuple(out)


def alloc(*shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    t = torch.empty(*shape, device=like.device, dtype=dtype or like.dtype)
    if NAN_FILL and t.dtype.is_floating_point:
        t.fill_(float("nan"))
    return t


def batch_groups(B: int, group: int):
    """[(size, part)]: the whole batch as one group (part returns a tensor as it is: no view to build per launch)
    when group <= 0 or group >= B, else groups of `group` along dim 0 (the last one shorter)."""
    if group <= 0 or group >= B:
        return [(B, lambda t: t)]
    return [(min(group, B - b0), lambda t, s=slice(b0, b0 + group): t[s]) for b0 in range(0, B, group)]


MAX_OFFSET = 2 ** 31 - 1  # the kernels address memory with 32-bit element offsets


def batch_runs(B: int, per_element: int, name: str) -> list:
    """The batch cut into runs of consecutive batch elements whose tensors (`per_element` elements a batch element,
    the largest of the call's) stay within the kernels' 32-bit offsets: one run where the whole batch fits. The
    ops call the kernels once per run, so a large batch is computed in parts, never addressed past 2^31."""
    if per_element > MAX_OFFSET:
        raise ValueError(f"backend='triton': {name} has {per_element:,} elements per batch element, more than the "
                         f"kernels' 32-bit offsets address ({MAX_OFFSET:,}): split the sequence, or use "
                         f"backend='torch'")
    if B * per_element <= MAX_OFFSET:   # (first: under torch.compile with dynamic shapes, a range guard, no
        return [slice(0, B)]            # specialisation on the sizes)
    step = max(1, MAX_OFFSET // max(1, per_element))
    return [slice(b, min(b + step, B)) for b in range(0, B, step)]


def packed_length(x: torch.Tensor, cu, max_seqlen, name: str = "w") -> int:
    """The tokens a launch over packed sequences is sized for: the longest sequence's length, from host offsets cu
    (max_seqlen, where given, must be at least that), or max_seqlen where cu is a tensor whose values are not read on
    the host. x (the packed input) must stay within the kernels' 32-bit offsets."""
    if x.numel() > MAX_OFFSET:
        raise ValueError(f"{name}: expected at most 2^31 - 1 elements packed (the kernels' 32-bit offsets), got "
                         f"{x.numel():,}: pack fewer tokens a call")
    if not isinstance(cu, torch.Tensor):
        longest = max((e - a for a, e in zip(cu, cu[1:])), default=0)
        if max_seqlen is not None and max_seqlen < longest:
            raise ValueError(f"max_seqlen: expected at least the longest sequence's length {longest}, got "
                             f"{max_seqlen}")
        return longest
    if max_seqlen is None:
        raise ValueError("max_seqlen: expected an int, at least the longest packed sequence's length, with "
                         "cu_seqlens as a tensor under torch.compile (its values are not read there), got None")
    return int(max_seqlen)


def join_runs(parts: list):
    """The results of an op called once per batch run, [(y, state)], as one call's: y and every state tensor
    concatenated along the batch."""
    state = parts[0][1]
    return torch.cat([y for y, _ in parts]), type(state)(*(torch.cat(s) for s in zip(*[st for _, st in parts])))


def cdiv(a: int, b: int) -> int:
    """a / b rounded up, on the host (triton.cdiv is a constexpr function from Triton 3.9 on: several times slower
    to call from Python, which every launch's glue does a few times)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def next_pow2_capped(n, cap: int) -> int:
    """min(next_pow2(n), cap) for a power of two cap. n may be a torch.SymInt (a length under torch.compile with
    dynamic shapes): past cap / 2 only that comparison is decided (a range guard), so every longer length shares
    one compiled graph; below it the length itself (next_pow2 specialises)."""
    return cap if n > cap // 2 else next_pow2(n)


# compute capabilities whose fp64 runs at half the fp32 rate (P100, V100, A100, H100 / H200, B200); the others run
# it at 1/32 to 1/64 (the consumer parts, Jetson Orin sm_87 and Thor sm_110, the later Blackwell parts)
FAST_FP64 = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}


def fast_fp64(device: torch.device | None) -> bool:
    """Whether kernels on this device may lean on fp64 arithmetic; true off NVIDIA GPUs (the interpreter, ROCm).
    (The properties, not get_device_capability: torch.compile folds them into a constant while it traces.)"""
    if device is None or torch.device(device).type != "cuda" or torch.version.hip:
        return True
    props = torch.cuda.get_device_properties(device)
    return (props.major, props.minor) in FAST_FP64


def cpu_timer(fn, quantiles=None, **_):
    """A `do_bench` stand-in for triton.autotune under the interpreter (no GPU timer there)."""
    import time
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return [ms] * len(quantiles) if quantiles else ms


def ieee(dtype: torch.dtype) -> bool:
    """fp32 inputs get IEEE fp32 dot products (no TF32), so they match the fp32 reference."""
    return dtype == torch.float32
