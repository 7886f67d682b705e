"""Configure and build the kernels and the plugin library against each TensorRT header set, for Orin (sm_87) and
Thor (sm_110), and run the host-only plugin test (ctest). Skips with the reason when a tool or header is absent."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# one folder per TensorRT version, each with an include/ (a checkout elsewhere names it in TOST_EDGE_TENSORRT_HEADERS)
HEADERS = Path(os.environ.get("TOST_EDGE_TENSORRT_HEADERS", ROOT.parent / "shared" / "third_party" / "tensorrt"))


def _missing_tools():
    return [t for t in ("cmake", "nvcc") if shutil.which(t) is None and not Path("/usr/local/cuda/bin/nvcc").exists()]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["10.3", "11.1"])
def test_plugins_build_and_pass_host_test(version, tmp_path):
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the plugins")
    include = HEADERS / version / "include"
    if not (include / "NvInferRuntime.h").exists():
        pytest.skip(f"TensorRT {version} headers not found at {include}")
    build = tmp_path / "build"
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DTensorRT_INCLUDE_DIR={include}",
                          "-DCMAKE_CUDA_ARCHITECTURES=87;110", "-DCMAKE_BUILD_TYPE=Release"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    assert "building the TensorRT plugins" in cfg.stdout
    bld = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    lib = build / "libtost_edge_plugins.so"
    assert lib.exists() and (build / "libtost_kernels.so").exists()
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in nm.lower(), "the plugin library must not need libnvinfer"
    test = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    out = subprocess.run([str(build / "tost_plugin_host_test"), str(lib)], capture_output=True, text=True).stdout
    assert " 0 failed" in out and int(out.split(" passed")[0].split()[-1]) >= 150, out


def test_cmake_without_tensorrt_says_what_it_skipped(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DTensorRT_INCLUDE_DIR=",
                          "-DTensorRT_ROOT=/nonexistent", "-DCMAKE_CUDA_ARCHITECTURES=87"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    assert "skipping" in cfg.stdout
