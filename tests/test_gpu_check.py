"""The stand-alone CUDA kernel check `normexport_gpu_check` (custom_ops/tests/gpu_check.cu):
installed next to the library when the build has CUDA, one entry per op with CUDA kernels,
and a clean, distinct exit (3, "no CUDA device") on a machine without a GPU or driver."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import normexport
from normexport import gpu_check, registry

INFO = normexport.native_info()
needs_cuda_build = pytest.mark.skipif(
    not INFO.get("CUDA"), reason="the op library was built without CUDA "
    f"({INFO.get('CUDA_SKIP_REASON') or INFO.get('SKIP_REASON')}): no GPU check is built")


@pytest.fixture
def program():
    """The installed program (normexport/_native), whatever $NORMEXPORT_GPU_CHECK says."""
    d = gpu_check.native_dir()
    assert d is not None, "normexport/_native is missing"
    prog = d / gpu_check.PROGRAM
    assert prog.is_file() and os.access(prog, os.X_OK), (
        f"{prog} is missing although the library was built with CUDA: {gpu_check.why_not_built()}")
    return str(prog)


def _run(*args, timeout=900):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@needs_cuda_build
def test_installed_next_to_library(program, library):
    assert Path(program).parent == Path(library).parent or os.environ.get("NORMEXPORT_LIBRARY")
    assert INFO.get("GPU_CHECK") == gpu_check.PROGRAM


@needs_cuda_build
def test_one_entry_per_op_with_cuda_kernels(program):
    r = _run(program, "--list")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = set(r.stdout.split())
    want = {op for op, c in registry.custom_ops().items() if registry.CUDA in c.kernels}
    assert want <= listed, f"ops with CUDA kernels but no GPU check: {want - listed}"
    assert listed <= set(registry.custom_ops()), listed


@needs_cuda_build
def test_runs_or_reports_no_device(program):
    """No GPU here: exit 3 with the message, no crash. A GPU: every case PASSES."""
    r = _run(program)
    if r.returncode == gpu_check.EXIT_NO_DEVICE:
        assert "no CUDA device" in r.stdout and "cudaGetDeviceCount" in r.stdout, r.stdout
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAIL" not in r.stdout and r.stdout.rstrip().endswith("PASS"), r.stdout


@needs_cuda_build
def test_bad_arguments(program):
    assert _run(program, "--no-such-option").returncode == gpu_check.EXIT_USAGE
    r = _run(program, "NoSuchOp")
    assert r.returncode == gpu_check.EXIT_USAGE and "NoSuchOp" in r.stderr
    r = _run(program, "--help")
    assert r.returncode == 0 and "exit status" in r.stdout


@needs_cuda_build
def test_cli_passes_the_program_status_through(program):
    r = _run(sys.executable, "-m", "normexport.cli", "gpu-check", "--list")
    assert r.returncode == 0 and "FilterResponseNorm" in r.stdout, r.stdout + r.stderr
    r = _run(sys.executable, "-m", "normexport.cli", "gpu-check")
    assert r.returncode in (0, gpu_check.EXIT_NO_DEVICE), r.stdout + r.stderr


def test_cli_when_not_built(tmp_path):
    """Without the program (a CPU-only build, or $NORMEXPORT_GPU_CHECK naming nothing): exit 4
    and a message saying why, not a traceback."""
    env = dict(os.environ, NORMEXPORT_GPU_CHECK=str(tmp_path / "missing"))
    r = subprocess.run([sys.executable, "-m", "normexport.cli", "gpu-check"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == gpu_check.EXIT_NOT_BUILT, r.stdout + r.stderr
    assert "not built" in r.stderr and "Traceback" not in r.stderr
