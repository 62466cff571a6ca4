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


def _cmd_bench(args) -> int:
    import json

    from . import bench
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v is not None else None
    sizes = tuple(split(args.sizes))
    if not sizes or any(s not in ("small", "large") for s in sizes):
        print(f"normexport bench: --sizes takes small and/or large, got {args.sizes!r}", file=sys.stderr)
        return 2
    if args.threads < 1 or (args.repeat is not None and args.repeat < 1):
        print("normexport bench: --threads and --repeat must be >= 1", file=sys.stderr)
        return 2
    graphs = split(args.graphs)
    if graphs == ["none"]:
        graphs = []
    try:
        doc = bench.run(ops=split(args.ops), sizes=sizes, threads=args.threads,
                        repeat=args.repeat if args.repeat is not None else (2 if args.quick else 5),
                        quick=args.quick, graphs=graphs, baseline=args.baseline,
                        log=None if args.json else (lambda m: print(m, file=sys.stderr, flush=True)))
    except ValueError as e:
        print(f"normexport bench: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=1) if args.json else bench.format_report(doc))
    return 0


def _cmd_gpu_check(args) -> int:
    from .gpu_check import run
    return run(extra=args.args)


def _gpu_check_argv(argv: list[str]) -> int:
    # every argument after `gpu-check` goes to the program as it is (also --help, --list)
    from .gpu_check import run
    return run(extra=argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpu-check"]:
        return _gpu_check_argv(argv[1:])
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
    s = sub.add_parser("bench", help="time native kernels vs function bodies vs stock ORT vs torch "
                       "vs a memory copy, per op and shape, and the reference networks")
    s.add_argument("--ops", help="comma-separated op types or registry names (default: every "
                   "custom op of the registry)")
    s.add_argument("--sizes", default="small,large", help="small (fits in cache) and/or large "
                   "(bytes read + written >= 4x the last-level cache); default small,large")
    s.add_argument("--threads", type=int, default=2, help="ORT intra-op and torch threads (default 2)")
    s.add_argument("--repeat", type=int, help="timed runs per measurement, median (default 5; "
                   "2 with --quick)")
    s.add_argument("--graphs", help="comma-separated normexport.graphs names for the model-level "
                   "section, or 'none' (default: all; pono_autoencoder with --quick)")
    s.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    s.add_argument("--quick", action="store_true", help="tiny shapes, repeat 2, one graph (a smoke run)")
    s.add_argument("--baseline", metavar="LIBRARY", help="another build of the op library (e.g. the "
                   "previous commit's libnormexport_ops.so): its native kernels are timed against this "
                   "build's in alternating rounds, reported as baseline / native per op and shape")
    s.set_defaults(fn=_cmd_bench)
    s = sub.add_parser("gpu-check", help="run the stand-alone CUDA kernel check (normexport_gpu_check) "
                       "on this machine's GPU")
    s.add_argument("args", nargs=argparse.REMAINDER, help="passed to the program (--help: its "
                   "options; exit 0 PASS, 1 FAIL, 2 usage, 3 no CUDA device, 4 not built)")
    s.set_defaults(fn=_cmd_gpu_check)
    from .cli_export import add_parser as _add_export
    _add_export(sub)
    from .cli_fold import add_parser as _add_fold
    _add_fold(sub)
    from .cli_check import add_parser as _add_check
    _add_check(sub)
    from .cli_calibrate import add_parsers as _add_calibrate   # recalibrate, audit-fp16
    _add_calibrate(sub)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
