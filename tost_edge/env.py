"""What this machine has, and what each missing piece disables (`tost-edge check-env`)."""
from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
from typing import List, NamedTuple


class Item(NamedTuple):
    name: str
    version: str | None
    disables: str


PACKAGES = [
    ("numpy", "everything"),
    ("onnxruntime", "the default runtime backend"),
    ("torch", "models, ops, export and training (`pip install tost-edge[torch]`)"),
    ("onnx", "ONNX export and validation (`[export]`)"),
    ("onnxscript", "the dynamo ONNX exporter (`[export]`)"),
    ("onnx_graphsurgeon", "plugin-flavour graph passes (`[export]`)"),
    ("polygraphy", "golden I/O files and engine checks (`[export]`)"),
    ("safetensors", "saving and loading weights (`[torch]`)"),
    ("triton", "backend='triton' training kernels (`[triton]`)"),
    ("tensorrt", "engine build and the TensorRT runtime backend (install TensorRT / JetPack)"),
]


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:
        return None
    return getattr(m, "__version__", "installed")


def triton_target(capability: tuple[int, int]) -> str | None:
    """Why the installed Triton cannot compile kernels for a GPU of this compute capability, with the fix; None
    where it can (or where Triton is missing or cannot be asked). A Triton's bundled ptxas knows the architectures of
    its CUDA release: Jetson Thor's sm_110 needs CUDA 13's (Triton 3.6 bundles 12.9's, which calls it sm_101)."""
    try:
        from triton import knobs
        from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
        cap = 10 * capability[0] + capability[1]
        tool, arch = get_ptxas(cap), sm_arch_from_capability(cap)
        listed = subprocess.run([tool.path, "--help"], capture_output=True, text=True, timeout=60).stdout
        blackwell = tool.path == knobs.nvidia.ptxas_blackwell.path
    except Exception:
        return None
    if re.search(rf"\b{arch}\b", listed):
        return None
    var = "TRITON_PTXAS_BLACKWELL_PATH" if blackwell else "TRITON_PTXAS_PATH"
    return (f"Triton's ptxas ({tool.path}, CUDA {tool.version}) cannot compile for this GPU's {arch}: "
            f"point {var} at a newer CUDA's, e.g. {var}=/usr/local/cuda/bin/ptxas (CUDA 13 for sm_110)")


def check_env() -> dict:
    items = [Item(n, _version(n), d) for n, d in PACKAGES]
    gpu = "none"
    cuda = triton_problem = None
    try:
        import torch
        cuda = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gpu = f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
            triton_problem = triton_target((p.major, p.minor))
    except Exception:
        pass
    providers: List[str] = []
    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except Exception:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": items,
            "torch_cuda": cuda, "gpu": gpu, "onnxruntime_providers": providers,
            "triton_settings": os.environ.get("TOST_EDGE_TRITON_SETTINGS"), "triton_target": triton_problem}


def render(info: dict, console) -> None:
    from rich.table import Table
    console.print(f"Python {info['python']} on {info['platform']}")
    t = Table(title="packages")
    t.add_column("package")
    t.add_column("version")
    t.add_column("if missing, disables")
    for it in info["packages"]:
        t.add_row(it.name, it.version or "[red]missing[/]", "" if it.version else it.disables)
    console.print(t)
    console.print(f"torch CUDA build: {info['torch_cuda'] or 'none (CPU build)'}; GPU: {info['gpu']}")
    console.print(f"onnxruntime providers: {', '.join(info['onnxruntime_providers']) or 'none'}")
    if info.get("triton_settings"):
        console.print(f"Triton launch settings from TOST_EDGE_TRITON_SETTINGS={info['triton_settings']} "
                      "(`tost-edge triton-settings` lists them)")
    if info.get("triton_target"):
        console.print(f"[red]backend='triton' will not compile here[/]: {info['triton_target']}")
    if info["gpu"] == "none":
        console.print("no GPU: Triton kernels run only with TRITON_INTERPRET=1 (slow); engines cannot be built here")
