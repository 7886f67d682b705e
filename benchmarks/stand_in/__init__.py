"""Triton's launch path on a machine without a GPU: a stand-in for the CUDA driver (libcuda.c, built here with gcc
on first use) whose every call succeeds at once, so that an op's launches go through everything the host does on a
GPU machine (the ops' host code, autograd, Triton's binder, kernel cache and its compiled C launcher) and its host
time can be measured on any CPU (`python benchmarks/host_time.py --stand-in`).

    import stand_in                      # from benchmarks/ (on sys.path)
    launches = stand_in.activate()       # before the first launch; TRITON_INTERPRET must be unset
    ...                                  # CPU tensors, as if on an H100: kernels compile for sm_90 and launch nothing
    launches()                           # kernels launched so far

What differs from a GPU machine: the tensors are CPU tensors, so torch's own kernels (fills, copies) run on the CPU
(at small shapes about what a CUDA launch costs the host); the driver's own cost of a launch (a few µs in
cuLaunchKernelEx) is missing; the outputs hold whatever memory held. Registers and spills of each compiled kernel come
from cuobjdump, as the driver would report them, so the ops' launch plans (which read them) are the GPU's. The
autotuners time nothing: each takes its first config.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

SOURCE = Path(__file__).with_name("libcuda.c")
H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": (9, 0), "sms": 132, "regs": 65536, "threads": 2048,
        "shared": 228 * 1024}
ORIN = {"name": "Orin", "capability": (8, 7), "sms": 16, "regs": 65536, "threads": 1536,    # Jetson AGX Orin 64GB
        "shared": 164 * 1024}


def build(cache: Path | None = None) -> Path:
    """libcuda.so.1 compiled from libcuda.c against Triton's own cuda.h, in a folder named by the source's hash."""
    import triton
    include = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    folder = (cache or Path(tempfile.gettempdir())) / f"tost_edge_stand_in_{digest}"
    lib = folder / "libcuda.so.1"
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"libcuda.{os.getpid()}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", f"-I{include}", str(SOURCE),
                        "-o", str(tmp)], check=True)
        tmp.rename(lib)                  # atomic: a concurrent build never loads half a file
    link = folder / "libcuda.so"         # what the launchers' `-lcuda` links against
    try:
        link.symlink_to("libcuda.so.1")
    except FileExistsError:              # made by another process building at the same time
        pass
    return folder


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers a thread, spill bytes a thread) of a compiled kernel, read by Triton's cuobjdump."""
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    grab = lambda key: int(m.group(1)) if (m := re.search(rf"{key}:(\d+)", usage)) else 0  # noqa: E731
    return grab("REG"), grab("STACK")


def activate(device: dict = H100):
    """Makes Triton launch through the stand-in driver and torch.cuda describe `device`; returns a function that
    counts the launches made so far. Not undone: call it in a process of its own."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("stand_in.activate(): unset TRITON_INTERPRET (the interpreter never reaches a driver)")
    folder = build()
    os.environ["TRITON_LIBCUDA_PATH"] = str(folder)
    lib = ctypes.CDLL(str(folder / "libcuda.so.1"), mode=ctypes.RTLD_GLOBAL)  # dlopen("libcuda.so.1") finds it
    lib.tost_stand_in_device(device["sms"], *device["capability"])
    lib.tost_stand_in_launches.restype = ctypes.c_ulonglong

    import torch
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime.driver import driver
    cuda = CudaDriver()
    cuda.get_current_device = lambda: 0                 # torch.cuda's C calls on a GPU machine: as cheap
    cuda.get_current_stream = lambda index=None: 0
    cuda.get_device_capability = lambda index=None: device["capability"]
    load_binary = cuda.utils.load_binary

    def load_with_usage(name, kernel, shared, index):
        module, function, _, _, max_threads = load_binary(name, kernel, shared, index)
        return (module, function, *resource_usage(kernel), max_threads)
    cuda.utils.load_binary = load_with_usage
    driver.set_active(cuda)

    props = SimpleNamespace(name=device["name"], major=device["capability"][0], minor=device["capability"][1],
                            multi_processor_count=device["sms"], regs_per_multiprocessor=device["regs"],
                            max_threads_per_multi_processor=device["threads"],
                            shared_memory_per_multiprocessor=device["shared"])
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_properties = lambda index=None: props
    torch.cuda.get_device_capability = lambda index=None: device["capability"]
    torch.cuda.get_device_name = lambda index=None: device["name"]
    _accept_cpu_tensors(device)
    return lib.tost_stand_in_launches


def _accept_cpu_tensors(device: dict) -> None:
    """The ops take the CPU tensors as if they were on the GPU (the card's fp64 rate too), and the autotuners take
    their first config."""
    import triton
    from tost_edge.ops.triton import causal_tssa, causal_tssa_chunks, linear_attention, linear_attention_chunks, \
        tssa, tssa_resident, utils

    def check_available(*tensors):
        if {t.device.type for t in tensors} != {"cpu"}:
            raise RuntimeError("stand-in driver: expected CPU tensors")
    for module in (causal_tssa, causal_tssa_chunks, linear_attention, linear_attention_chunks, tssa, tssa_resident,
                   utils):
        if hasattr(module, "check_available"):
            module.check_available = check_available
        if hasattr(module, "fast_fp64"):
            module.fast_fp64 = lambda _device: device["capability"] in utils.FAST_FP64
        for value in list(vars(module).values()) + list(getattr(module, "KERNELS", {}).values()):
            value = getattr(value, "autotuner", value)                      # utils.Tuned
            if isinstance(value, triton.runtime.Autotuner):
                value._do_bench = lambda kernel_call, quantiles: [1.0, 1.0, 1.0]   # times nothing, compiles one
                value.cache_results = False                  # and keeps no such timings on disk
