"""Finding the native op library and opening ONNX Runtime sessions with it."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import onnx

ENV_LIBRARY = "NORMEXPORT_LIBRARY"


def native_info() -> dict[str, Any]:
    """What the build of the native library recorded (see custom_ops/cmake/native_init.py.in)."""
    try:
        from . import _native as info  # generated and installed by the CMake build
    except ImportError:
        return {"LIBRARY": None, "SKIP_REASON": "normexport was installed without running its "
                "CMake build (normexport/_native is missing)", "CUDA": False}
    return {k: getattr(info, k) for k in dir(info) if k.isupper()}


def library_path() -> str | None:
    """Absolute path of the ``normexport`` ONNX Runtime op library, or None when not built.

    ``$NORMEXPORT_LIBRARY`` overrides the installed copy (it must then exist)."""
    env = os.environ.get(ENV_LIBRARY)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"${ENV_LIBRARY} points to {env!r}, which is not a file")
        return str(Path(env).resolve())
    try:
        from . import _native as info
    except ImportError:
        return None
    if not getattr(info, "LIBRARY", None):
        return None
    p = Path(info.__file__).with_name(info.LIBRARY)
    return str(p) if p.is_file() else None


def default_providers() -> list[str]:
    import onnxruntime as ort
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def session(path: str | os.PathLike | bytes | onnx.ModelProto, providers: Iterable[str] | None = None,
            *, use_library: bool = True, sess_options=None, **kw):
    """An ``onnxruntime.InferenceSession`` with the normexport op library registered.

    ``use_library=False`` (or a build without the library) leaves the ``normexport`` nodes to
    their ONNX function bodies. Other keyword arguments go to ``InferenceSession``."""
    import onnxruntime as ort
    so = sess_options if sess_options is not None else ort.SessionOptions()
    lib = library_path() if use_library else None
    if lib:
        so.register_custom_ops_library(lib)
    if isinstance(path, onnx.ModelProto):
        path = path.SerializeToString()
    elif not isinstance(path, bytes):
        path = os.fspath(path)
    return ort.InferenceSession(path, sess_options=so,
                                providers=list(providers) if providers else default_providers(), **kw)


def served_by(model: str | os.PathLike | bytes | onnx.ModelProto, feeds: dict, *,
              providers: Iterable[str] | None = None, use_library: bool = True) -> Counter:
    """Run once with ORT profiling and count the executed nodes as (op_type, provider).

    A ``normexport`` node that ran through a native kernel shows up under its own op type; one
    that ran through its ONNX function shows up as the body's standard ops instead."""
    import tempfile

    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "prof")
        s = session(model, providers, use_library=use_library, sess_options=so)
        s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    return Counter((e["args"]["op_name"], e["args"].get("provider", "?")) for e in events
                   if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"))


def ort_conflicts() -> list[str]:
    """Messages for ONNX Runtime distributions installed side by side (they share the
    ``onnxruntime`` module, and the last one installed silently wins)."""
    from importlib import metadata
    names = set()
    for d in metadata.distributions():
        n = (d.metadata["Name"] or "").lower().replace("_", "-")
        if n.startswith("onnxruntime") and n not in ("onnxruntime-extensions",):
            names.add(n)
    if len(names) > 1:
        return [f"several ONNX Runtime packages are installed ({', '.join(sorted(names))}); keep "
                f"one: pip uninstall -y {' '.join(sorted(names))} && pip install <the one you want>"]
    return []
