"""The ``normexport`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_ops(args) -> int:
    import onnxruntime as ort

    from . import registry
    from .parity import format_table
    from .runtime import library_path, native_info, ort_conflicts
    info = native_info()
    lib = library_path()
    print(f"library:      {lib or 'not built (' + str(info.get('SKIP_REASON')) + ')'}")
    print(f"onnxruntime:  {ort.__version__} (providers: {', '.join(ort.get_available_providers())})")
    if lib:
        print(f"built with:   ORT headers API {info.get('ORT_API_VERSION')} from "
              f"{info.get('ORT_HEADERS_SOURCE')}; CUDA kernels: "
              f"{'yes (archs ' + str(info.get('CUDA_ARCHS')) + ')' if info.get('CUDA') else 'no'}")
    for msg in ort_conflicts():
        print(f"WARNING: {msg}")
    rows = []
    for spec in registry.REGISTRY.values():
        op = spec.export
        if not isinstance(op, registry.CustomOp):
            continue
        if not op.kernels:
            rows.append([f"normexport::{op.op_type}", "any", "any", "function fallback (no kernel yet)"])
        for ep, dtypes in op.kernels.items():
            built = bool(lib) and (ep != registry.CUDA or bool(info.get("CUDA")))
            rows.append([f"normexport::{op.op_type}", ep, ",".join(dtypes),
                         "native kernel" if built else "function fallback"])
    print(format_table(["op", "execution provider", "dtypes", "runs as"], rows))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run
    return 0 if run(out_dir=args.out, steps=args.steps, batch=args.batch, repeat=args.repeat) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="normexport", description="Train with any normalization "
                                "layer, deploy with none of the pain.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ops", help="the native op library: path, ORT version, registered kernels")
    s.set_defaults(fn=_cmd_ops)
    s = sub.add_parser("demo", help="train, export and check parity of a bundled FRN model")
    s.add_argument("--out", help="keep the exported ONNX file in this folder")
    s.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    s.add_argument("--batch", type=int, default=8, help="batch for parity and timing (default 8)")
    s.add_argument("--repeat", type=int, default=20, help="timing repetitions (default 20)")
    s.set_defaults(fn=_cmd_demo)
    from .cli_export import add_parser as _add_export
    _add_export(sub)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
