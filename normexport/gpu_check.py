"""``normexport gpu-check``: run the stand-alone CUDA kernel check (custom_ops/tests/gpu_check.cu).

The program ``normexport_gpu_check`` is built by the CMake build when CUDA is enabled and
installed next to the op library in ``normexport/_native/``. It calls every op's CUDA launcher
on device buffers against a float64 CPU reference and prints max abs / rel error and PASS/FAIL
per case.

Exit status (the program's, passed through): 0 all PASS, 1 a case FAILED, 2 bad arguments,
3 no CUDA device or driver. This wrapper adds 4: the program is not installed (a build
without CUDA, or without the native build at all).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .runtime import native_info

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_NO_DEVICE, EXIT_NOT_BUILT = 0, 1, 2, 3, 4
PROGRAM = "normexport_gpu_check"
ENV_PROGRAM = "NORMEXPORT_GPU_CHECK"


def native_dir() -> Path | None:
    """``normexport/_native`` of this install (where the library and the program live)."""
    try:
        from . import _native
    except ImportError:
        return None
    return Path(_native.__file__).parent


def program_path() -> str | None:
    """Path of the installed ``normexport_gpu_check``, or None when it is not there.
    ``$NORMEXPORT_GPU_CHECK`` overrides it (e.g. a binary from a build folder)."""
    env = os.environ.get(ENV_PROGRAM)
    if env:
        return env if Path(env).is_file() else None
    d = native_dir()
    if d is None:
        return None
    p = d / (native_info().get("GPU_CHECK") or PROGRAM)
    return str(p) if p.is_file() else None


def why_not_built() -> str:
    info = native_info()
    if not info.get("LIBRARY"):
        return f"the native build was skipped: {info.get('SKIP_REASON')}"
    if not info.get("CUDA"):
        return (f"the op library was built without CUDA ({info.get('CUDA_SKIP_REASON')}); "
                f"reinstall on a machine with nvcc on PATH")
    return (f"{PROGRAM} is missing from {native_dir()} (an install from before the GPU check "
            f"existed?); reinstall normexport")


def run(extra: list[str] | None = None) -> int:
    prog = program_path()
    if prog is None:
        print(f"normexport gpu-check: not built: {why_not_built()}", file=sys.stderr)
        return EXIT_NOT_BUILT
    sys.stdout.flush()
    return subprocess.call([prog, *(extra or [])])
