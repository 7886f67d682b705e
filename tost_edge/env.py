"""What this machine has, and what each missing piece disables (`tost-edge check-env`)."""
from __future__ import annotations

import importlib
import os
import platform
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


def check_env() -> dict:
    items = [Item(n, _version(n), d) for n, d in PACKAGES]
    gpu = "none"
    cuda = None
    try:
        import torch
        cuda = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gpu = f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
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
            "triton_settings": os.environ.get("TOST_EDGE_TRITON_SETTINGS")}


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
    if info["gpu"] == "none":
        console.print("no GPU: Triton kernels run only with TRITON_INTERPRET=1 (slow); engines cannot be built here")
