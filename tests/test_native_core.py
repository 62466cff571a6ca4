"""custom_ops/tests/core_tests.cc: the framework-free CPU cores (no ONNX Runtime in the loop),
compiled here with the C++ compiler (baseline x86-64, as the library's fallback path) and run:
half conversions, the FRN / AdaIN / PONO cores and the plane moments against float64 references
(large means with small spreads included), NaN propagation, and streaming vs ordinary stores bit
for bit. The CMake target `normexport_core_tests` (NORMEXPORT_BUILD_TESTS=ON) builds the same
file; this test makes CI run it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "custom_ops"
CXX = os.environ.get("CXX", "g++")


@pytest.mark.skipif(shutil.which(CXX) is None, reason="no C++ compiler")
def test_core_tests_pass(tmp_path):
    exe = tmp_path / "core_tests"
    build = subprocess.run([CXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'include'}",
                            f"-I{ROOT / 'ops'}", str(ROOT / "tests" / "core_tests.cc"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "all core tests passed" in r.stdout, r.stdout[-2000:]
