"""``normexport fold IN.onnx OUT.onnx``: rewrite an ONNX file from any exporter with the graph
passes (``normexport.passes``): fuse decomposed normalization patterns into ``normexport`` ops,
fold BatchNormalization into adjacent Conv / ConvTranspose / Gemm / MatMul, verify in ONNX
Runtime, write only what verified."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
Each rule that changes the graph is verified before the next runs: the original and the
rewritten graph run in ONNX Runtime on the same random inputs (shapes from the graph; a
symbolic batch dim is 2; other symbolic dims need --input-shape), or on --inputs; a rewritten
graph with normexport nodes runs with the op library and without it (function bodies). Per
output: max|actual - expected| <= atol + rtol * max|expected| (float32 default rtol 1e-4,
atol 1e-5; float16 1e-2 / 1e-3). A failure names the rule and the nodes it rewrote, and
nothing is written.

--input-shape NAME=DIMS  e.g. --input-shape x=1x3x224x224 (or 1,3,224,224); once per input
--inputs FEEDS.npz       one array per graph input, by name (np.savez(path, x=...))

Exit status: 0 written (or --dry-run ok); 1 verification failed (nothing written); 2 bad input
file, bad arguments, or a graph that fails onnx.checker (nothing written).
"""


class _Usage(Exception):
    pass


def add_parser(sub) -> None:
    s = sub.add_parser("fold", help="fuse norm patterns into normexport ops and fold BatchNormalization "
                       "in an ONNX file, verified in ONNX Runtime",
                       description="Rewrite IN.onnx with the normexport graph passes and write OUT.onnx "
                                   "if the rewrite verifies.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("src", metavar="IN.onnx", nargs="?")
    s.add_argument("dst", metavar="OUT.onnx", nargs="?")
    s.add_argument("--rules", help="comma-separated rule names to run (default: all; see --list-rules)")
    s.add_argument("--list-rules", action="store_true", help="list the rules in the order they run, and exit")
    s.add_argument("--explain", action="store_true", help="say why each rule did not match where it was tried")
    s.add_argument("--dry-run", action="store_true", help="rewrite and verify, write nothing")
    s.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")
    s.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="shape of a graph input, e.g. x=1x3x224x224 (repeatable)")
    s.add_argument("--inputs", metavar="FEEDS.npz", help="verification inputs (one array per input name)")
    s.add_argument("--rtol", type=float, default=None, help="normwise rtol (default by dtype: float32 1e-4)")
    s.add_argument("--atol", type=float, default=None, help="atol (default by dtype: float32 1e-5)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(fn=run)


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for text in items:
        name, sep, dims = text.rpartition("=")
        if not sep or not name or not dims:
            raise _Usage(f"--input-shape {text!r}: expected NAME=DIMS, e.g. x=1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d.strip())
        except ValueError:
            raise _Usage(f"--input-shape {text!r}: DIMS must be integers separated by x or ,") from None
        if any(d < 0 for d in shape):
            raise _Usage(f"--input-shape {text!r}: dims must be >= 0")
        if name in out:
            raise _Usage(f"--input-shape: {name!r} given twice")
        out[name] = shape
    return out


def _list_rules() -> int:
    from .parity import format_table
    from .passes import RULES
    print(format_table(["rule", "anchors", "what it does"],
                       [[r.name, ",".join(r.anchors), r.summary] for r in RULES.values()]))
    return 0


def run(args) -> int:
    from .passes import PassError, rewrite_file
    try:
        if args.list_rules:
            return _list_rules()
        if not args.src or (not args.dst and not args.dry_run):
            raise _Usage("expected IN.onnx OUT.onnx (OUT.onnx may be left out with --dry-run)")
        for name, v in (("--rtol", args.rtol), ("--atol", args.atol)):
            if v is not None and not v >= 0:
                raise _Usage(f"{name} must be >= 0, got {v}")
        if args.inputs and args.input_shape:
            raise _Usage("--inputs and --input-shape exclude each other (the feeds fix the shapes)")
        shapes = parse_input_shapes(args.input_shape)
        report = rewrite_file(args.src, args.dst, args.rules, dry_run=args.dry_run, explain=args.explain,
                              verify=not args.no_verify, input_shapes=shapes or None, feeds=args.inputs,
                              rtol=args.rtol, atol=args.atol)
    except (_Usage, PassError) as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(e), "usage_error": True}, indent=1))
        print(f"normexport fold: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.format())
    if not report.ok:
        print(f"normexport fold: {report.error}", file=sys.stderr)
        return 1
    return 0
