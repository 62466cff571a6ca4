"""``normexport export PKG.MODULE:FACTORY out.onnx``: export a model from a factory, print what
the export did (nodes before / after folding, custom ops) and check parity with torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

DTYPES = ("float32", "float16", "float64", "int64", "int32")

EPILOG = """\
FACTORY: PKG.MODULE:NAME, where NAME is a callable returning an nn.Module, or (module, inputs)
  as normexport.graphs' factories (inputs: a tuple of example tensors, or of shapes), or a key
  of the module's GRAPHS table: e.g. normexport.graphs:resnet18_bn. The module must be
  importable (installed, in the current folder, or on PYTHONPATH). The model is put in eval
  mode.

--input-shape SHAPE[:DTYPE[:HIGH]], once per forward argument, in order:
  1,3,224,224           float32 (N(0, 1) random values)
  2,16:float16          DTYPE one of float32, float16, float64, int64, int32
  4:int64:10            integer input (labels, style indices) of shape (4,), values in [0, 10):
                        HIGH is required for integer dtypes
  Given, it overrides the factory's example inputs. Dim 0 is the batch (dynamic by default).

Parity: ONNX Runtime (CPU, with the op library) against torch eval on fresh random inputs of
the same shapes (rtol/atol: NORMS.md float32 bounds unless --rtol/--atol).
Exit status: 0 parity PASS; 1 parity FAIL (the file is written); 2 bad arguments, factory or
inputs, or the export was refused (nothing written).
"""


class UsageError(Exception):
    """A bad factory string, input spec or factory result (exit status 2)."""


class InputSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int | None = None

    def make(self, gen):
        import torch
        if self.dtype.startswith("int"):
            return torch.randint(0, self.high, self.shape, generator=gen, dtype=getattr(torch, self.dtype))
        return torch.randn(self.shape, generator=gen).to(getattr(torch, self.dtype))


def parse_input_spec(text: str) -> InputSpec:
    parts = text.split(":")
    if not 1 <= len(parts) <= 3:
        raise UsageError(f"--input-shape {text!r}: expected SHAPE[:DTYPE[:HIGH]], e.g. 1,3,224,224 "
                         f"or 4:int64:10")
    try:
        shape = tuple(int(d) for d in parts[0].replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: the shape must be comma-separated integers") from None
    if not shape or any(d < 0 for d in shape):
        raise UsageError(f"--input-shape {text!r}: the shape must be non-empty, dims >= 0")
    dtype = parts[1] if len(parts) > 1 else "float32"
    if dtype not in DTYPES:
        raise UsageError(f"--input-shape {text!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    high = None
    if len(parts) > 2:
        if not dtype.startswith("int"):
            raise UsageError(f"--input-shape {text!r}: HIGH applies to integer dtypes only")
        try:
            high = int(parts[2])
        except ValueError:
            raise UsageError(f"--input-shape {text!r}: HIGH must be an integer") from None
        if high < 1:
            raise UsageError(f"--input-shape {text!r}: HIGH must be >= 1 (values are drawn in [0, HIGH))")
    elif dtype.startswith("int"):
        raise UsageError(f"--input-shape {text!r}: an integer input needs its range, "
                         f"SHAPE:{dtype}:HIGH (values in [0, HIGH)), e.g. 4:int64:10")
    return InputSpec(shape, dtype, high)


def load_factory(text: str):
    """(model, example inputs or None) from ``PKG.MODULE:NAME``."""
    from torch import nn
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"factory {text!r}: expected PKG.MODULE:FACTORY (e.g. "
                         f"normexport.graphs:resnet18_bn or mypkg.models:build)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())   # as `python -m` does; the console script lacks it
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"factory {text!r}: cannot import module {module_name!r} ({e}); is it "
                         f"installed, or its folder on PYTHONPATH?") from None
    graphs = getattr(module, "GRAPHS", None)
    if isinstance(graphs, dict) and attr in graphs:   # a GRAPHS key wins (names may be submodules)
        obj = graphs[attr]
    else:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
    if obj is None:
        known = f"; its GRAPHS: {', '.join(graphs)}" if isinstance(graphs, dict) else ""
        raise UsageError(f"factory {text!r}: module {module_name} has no {attr!r}{known}")
    if isinstance(obj, nn.Module):
        result = obj
    elif callable(obj):
        result = obj()
    else:
        raise UsageError(f"factory {text!r}: {attr} is a {type(obj).__name__}, not a callable")
    model, example = (result if isinstance(result, tuple) and len(result) == 2 else (result, None))
    if not isinstance(model, nn.Module):
        raise UsageError(f"factory {text!r} returned {type(result).__name__}; expected an nn.Module "
                         f"or (nn.Module, example inputs)")
    return model, example


def _example_specs(example):
    """The factory's example inputs: tensors (kept) or shapes (float32 random)."""
    import torch
    if example is None:
        return None
    if isinstance(example, torch.Tensor):
        return (example,)
    example = tuple(example)
    if example and all(isinstance(d, int) for d in example):   # one shape
        return (InputSpec(example),)
    out = []
    for e in example:
        if isinstance(e, torch.Tensor):
            out.append(e)
        elif isinstance(e, (tuple, list)) and all(isinstance(d, int) for d in e):
            out.append(InputSpec(tuple(e)))
        else:
            raise UsageError(f"the factory's example inputs must be tensors or shapes, got {type(e).__name__}")
    return tuple(out)


def _draw(specs, gen):
    from .graphs import random_like
    return tuple(random_like(s, None, gen) if not isinstance(s, InputSpec) else s.make(gen) for s in specs)


class _Stages:
    """A stage printer on stderr: ``[  3.2s] tracing``."""

    def __init__(self, stream=None):
        self.t0 = time.perf_counter()
        self.stream = stream or sys.stderr

    def __call__(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {what}", file=self.stream, flush=True)


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a model from a factory; node counts, custom ops, parity",
                       description="Export PKG.MODULE:FACTORY's model to ONNX with normexport.export, "
                                   "print nodes by type before/after folding, the custom ops emitted, "
                                   "and parity against torch on random input.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("factory", metavar="PKG.MODULE:FACTORY")
    s.add_argument("out", metavar="OUT.onnx")
    s.add_argument("--input-shape", action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                   help="one per forward argument (see below)")
    s.add_argument("--no-fold", action="store_true", help="do not fold BN / weight norm before export")
    s.add_argument("--no-custom-ops", action="store_true",
                   help="no normexport nodes: registered norms decomposed into standard ops")
    s.add_argument("--opset", type=int, default=None, help="default-domain opset (default: normexport's, 20)")
    s.add_argument("--dynamic-spatial", action="store_true", help="dynamic H/W (named <input>_height ...)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    s.add_argument("--rtol", type=float, default=None, help="parity rtol (default 1e-5)")
    s.add_argument("--atol", type=float, default=None, help="parity atol (default 1e-6)")
    s.set_defaults(fn=run)


def run(args) -> int:
    try:
        return _run(args)
    except UsageError as e:
        print(f"normexport export: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from .export import DEFAULT_OPSET, ExportError, export
    from .parity import compare, format_table
    from .runtime import session
    from .spec import DEFAULT_TOLERANCES, Tolerance

    stage = _Stages()
    specs = tuple(parse_input_spec(t) for t in args.input_shape)  # bad specs fail before loading
    stage(f"loading {args.factory}")
    model, example = load_factory(args.factory)
    model.eval()
    specs = specs or _example_specs(example)
    if not specs:
        raise UsageError(f"{args.factory} gives no example inputs: pass --input-shape for each "
                         f"forward argument (e.g. --input-shape 1,3,224,224)")
    gen = torch.Generator().manual_seed(args.seed)
    inputs = _draw(specs, gen)
    kw = dict(opset=args.opset or DEFAULT_OPSET, custom_ops=not args.no_custom_ops,
              dynamic_spatial=args.dynamic_spatial)
    out = Path(args.out)
    try:
        before = None
        if not args.no_fold:
            stage("exporting without folding (node counts before folding)")
            with tempfile.TemporaryDirectory(prefix="normexport-export-") as d:
                before = export(model, inputs, Path(d) / "unfolded.onnx", fold=False, **kw).node_counts
            stage("exporting")
        report = export(model, inputs, out, fold=not args.no_fold,
                        progress=lambda s: stage(f"  {s}"), **kw)
    except ExportError as e:
        print(f"normexport export: error: {e}", file=sys.stderr)
        return 2

    stage("checking parity (ONNX Runtime CPU vs torch eval, fresh random input)")
    fresh = _draw(specs, gen)
    sess = session(out, ["CPUExecutionProvider"])
    ys = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), fresh)})
    with torch.no_grad():
        expected = model(*fresh)
    expected = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    default = DEFAULT_TOLERANCES["float32"]
    tol = Tolerance(rtol=default.rtol if args.rtol is None else args.rtol,
                    atol=default.atol if args.atol is None else args.atol)
    names = [o.name for o in sess.get_outputs()]
    result = compare(ys, [t.detach().numpy() for t in expected], tolerance=tol, names=names)
    stage("done")

    print(f"wrote {out} (opset {report.opset}, {'dynamic' if report.dynamic_batch else 'static'} batch"
          f"{', dynamic spatial' if report.dynamic_spatial else ''}"
          f"{', folded' if not args.no_fold else ', not folded'}"
          f"{'' if not args.no_custom_ops else ', no custom ops'})")
    print("\nnodes by type:")
    after = report.node_counts
    if before is not None:
        rows = [[op, str(before.get(op, 0)), str(after.get(op, 0))] for op in sorted(set(before) | set(after))]
        rows.append(["total", str(sum(before.values())), str(sum(after.values()))])
        print(format_table(["op", "before fold", "after fold"], rows))
    else:
        rows = [[op, str(n)] for op, n in sorted(after.items())] + [["total", str(sum(after.values()))]]
        print(format_table(["op", "count (not folded)"], rows))
    print("\ncustom ops emitted:")
    if report.custom_nodes:
        print(format_table(["node", "op", "from layer", "class"],
                           [[c.node, f"normexport::{c.op_type}", c.module, c.layer] for c in report.custom_nodes]))
    else:
        print("none" + (" (--no-custom-ops)" if args.no_custom_ops else ""))
    for note in report.notes:
        print(f"note: {note}")
    shapes = ", ".join("x".join(map(str, t.shape)) + ("" if t.is_floating_point() else f" {t.dtype}".replace("torch.", ""))
                       for t in fresh)
    print(f"\nparity vs torch eval (ONNX Runtime CPU; random input {shapes}; rtol={tol.rtol:g} atol={tol.atol:g}):")
    print(format_table(["output", "shape", "max abs", "max rel", "result"],
                       [[o.name, "x".join(map(str, o.shape)), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                         "PASS" if o else f"FAIL ({o.error or f'{o.n_bad} elements off'})"]
                        for o in result.outputs]))
    print(f"\nparity: {'PASS' if result else 'FAIL'}")
    return 0 if result else 1
