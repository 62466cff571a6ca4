"""The command line: `normexport ops` and `normexport demo`."""

import subprocess
import sys

import normexport


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "normexport.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_ops_lists_library_version_and_kernels(library):
    import onnxruntime as ort
    r = _run("ops")
    assert r.returncode == 0, r.stderr
    assert library in r.stdout and ort.__version__ in r.stdout
    for op in normexport.registry.custom_ops():
        assert f"normexport::{op}" in r.stdout
    assert "CPUExecutionProvider" in r.stdout and "float16" in r.stdout and "native kernel" in r.stdout


def test_demo_passes_and_prints_tables(library, tmp_path):
    r = _run("demo", "--steps", "4", "--repeat", "3", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "parity: PASS" in out and "ORT + normexport kernels" in out and "ORT function fallback" in out
    assert "FilterResponseNorm x" in out and "ms / batch" in out
    assert (tmp_path / "resnet18_frn.onnx").is_file()
