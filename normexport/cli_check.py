"""``normexport check PKG.MODULE:FACTORY model.onnx``: the training model (torch eval) against the
exported file in ONNX Runtime on each execution provider; on failure, the first layer whose
output diverges. Implementation: normexport/check.py; factory / input-shape handling shared
with ``normexport export`` (cli_export.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_export import UsageError, _draw, _example_specs, _Stages, load_factory, parse_input_spec

EPILOG = """\
FACTORY and --input-shape: as for `normexport export` (PKG.MODULE:NAME returning an nn.Module
  or (module, example inputs), e.g. normexport.graphs:resnet18_gn; SHAPE[:DTYPE[:HIGH]] once
  per forward argument). The model is put in eval mode. Without --input-shape the factory's
  example inputs give the shapes; values are seeded random (--seed), or --inputs DATA.npz (one
  array per graph input, named after the input or arr_0, arr_1, ...).

Per provider (cpu, cuda) and dtype (float32; float16 too with --fp16: ORT on a float16
conversion of the graph, against the same torch reference): max / mean abs and rel error,
normwise error, |error| quantiles, PASS/FAIL against NORMS.md tolerances (float32 rtol 1e-5
atol 1e-6, float16 rtol 1e-2 atol 1e-3; --rtol / --atol override). On failure, every torch
module's output (forward hooks) is compared with the ONNX value its nodes produce (node
metadata; a folded conv stands for its BN) and the first layer in graph order whose normwise
error exceeds the layer bound (float32 1e-4, float16 2e-2; --layer-rtol) is named.

--calib DATA.npz adds the train/infer-gap section (normexport.calibrate: per BN-family layer,
the eval-mode input statistics on this data vs the running statistics; a flagged layer fails
the check); --fp16 adds the float16 audit section (normexport.fp16audit: which norm layers
must stay in float32, which fails the check).

--report DIR writes report.txt, report.json and layers.png (error per layer, graph order).
Exit status: 0 PASS; 1 FAIL (parity, or a failing --calib / --fp16 section); 2 bad arguments,
factory, inputs or provider.
"""


def add_parser(sub) -> None:
    s = sub.add_parser("check", help="torch eval vs ONNX Runtime per provider; name the first "
                       "diverging layer on failure",
                       description="Check that MODEL.onnx computes what the training model "
                                   "computes, on each execution provider, and localize failures.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("factory", metavar="PKG.MODULE:FACTORY")
    s.add_argument("onnx", metavar="MODEL.onnx")
    s.add_argument("--input-shape", action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                   help="one per forward argument (default: the factory's example shapes)")
    s.add_argument("--inputs", metavar="DATA.npz", help="run on these arrays instead of random ones")
    s.add_argument("--providers", default="cpu", help="comma-separated: cpu, cuda or EP names (default cpu)")
    s.add_argument("--fp16", action="store_true", help="also run a float16 conversion of the graph "
                   "(and the fp16 audit section when normexport.fp16audit is installed)")
    s.add_argument("--rtol", type=float, default=None, help="output rtol (default: NORMS.md per dtype)")
    s.add_argument("--atol", type=float, default=None, help="output atol (default: NORMS.md per dtype)")
    s.add_argument("--output-tol", action="append", default=[], metavar="NAME=RTOL,ATOL",
                   help="tolerance of one graph output (repeatable; others: --rtol/--atol or NORMS.md)")
    s.add_argument("--layer-rtol", type=float, default=None,
                   help="normwise bound of an intermediate layer (default 1e-4 float32, 2e-2 float16)")
    s.add_argument("--reference", choices=("float32", "float64"), default="float32",
                   help="torch reference precision (default float32: the model as it is)")
    s.add_argument("--layers", action="store_true", help="compare every layer even when the outputs pass "
                   "and print the whole per-layer table")
    s.add_argument("--no-library", action="store_true", help="run the normexport nodes on their "
                   "ONNX function bodies, not the op library")
    s.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    s.add_argument("--calib", metavar="DATA.npz", help="add the train/infer-gap section "
                   "(normexport.calibrate.train_infer_gap) on this calibration set (the format of "
                   "`normexport recalibrate --data`: one array per forward argument, samples on dim 0)")
    s.add_argument("--calib-batch-size", type=int, default=32, help="samples per --calib batch (default 32)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--report", metavar="DIR", help="write report.txt, report.json, layers.png here")
    s.set_defaults(fn=run)


def run(args) -> int:
    from .check import CheckError
    try:
        return _run(args)
    except (UsageError, CheckError) as e:
        print(f"normexport check: error: {e}", file=sys.stderr)
        return 2


def _inputs(args, model, example, onnx_path):
    """The forward arguments: --inputs .npz (path, loaded by check), else random from specs."""
    import torch
    if args.inputs:
        if args.input_shape:
            raise UsageError("give --inputs or --input-shape, not both")
        return args.inputs
    specs = tuple(parse_input_spec(t) for t in args.input_shape) or _example_specs(example)
    if not specs:
        raise UsageError(f"{args.factory} gives no example inputs: pass --input-shape for each "
                         f"forward argument (e.g. --input-shape 1,3,224,224) or --inputs DATA.npz")
    return _draw(specs, torch.Generator().manual_seed(args.seed))


def extra_sections(args, model, inputs) -> tuple[dict, list[str]]:
    """The report sections of the other checks: --calib -> normexport.calibrate.train_infer_gap
    on the .npz batches (the format of `normexport recalibrate --data`, read by its loader),
    --fp16 -> normexport.fp16audit.fp16_audit on the check's inputs. A section that cannot run
    (module missing, no BN-family layer) is an error for --calib (exit 2, it was asked for) and
    a note for --fp16 (the float16 ORT comparison still runs)."""
    sections, notes = {}, []
    if args.calib:
        try:
            from .calibrate import train_infer_gap
            from .cli_calibrate import load_npz as load_calibration
        except ImportError as e:
            raise UsageError(f"--calib needs normexport.calibrate (train_infer_gap), which this "
                             f"install lacks ({e})") from None
        try:
            batches = load_calibration(args.calib, model, tuple(inputs), args.calib_batch_size, None)
        except UsageError as e:
            raise UsageError(str(e).replace("--data", "--calib")) from None
        try:
            sections["train_infer_gap"] = train_infer_gap(model, batches)
        except (ValueError, TypeError) as e:
            raise UsageError(f"--calib: {e}") from None
    if args.fp16:
        try:
            from .fp16audit import fp16_audit
        except ImportError:
            notes.append("fp16 audit section skipped: normexport.fp16audit is not in this install")
        else:
            try:
                sections["fp16_audit"] = fp16_audit(model, tuple(inputs))
            except (ValueError, TypeError) as e:
                notes.append(f"fp16 audit section skipped: {e}")
    return sections, notes


def _output_tolerances(args, onnx_path):
    """--output-tol NAME=RTOL,ATOL ... -> {name: Tolerance} (the outputs not named: --rtol /
    --atol or the NORMS.md default of each dtype); None when not given."""
    if not args.output_tol:
        return None
    import onnx

    from .spec import Tolerance
    outputs = [o.name for o in onnx.load(onnx_path, load_external_data=False).graph.output]
    given = {}
    for text in args.output_tol:
        name, sep, nums = text.partition("=")
        try:
            rtol, atol = (float(v) for v in nums.split(","))
        except ValueError:
            raise UsageError(f"--output-tol {text!r}: expected NAME=RTOL,ATOL, e.g. logits=1e-4,1e-5") from None
        if not sep or name not in outputs:
            raise UsageError(f"--output-tol {text!r}: the model's outputs are {', '.join(outputs)}")
        given[name] = Tolerance(rtol, atol)

    return given


def _run(args) -> int:
    import onnx

    from .check import _graph_inputs, check, load_npz

    stage = _Stages()
    onnx_path = Path(args.onnx)
    if not onnx_path.is_file():
        raise UsageError(f"ONNX file {onnx_path} does not exist")
    if args.inputs and not Path(args.inputs).is_file():
        raise UsageError(f"--inputs {args.inputs} does not exist")
    if args.calib and not Path(args.calib).is_file():
        raise UsageError(f"--calib {args.calib} does not exist")
    from .check import resolve_providers
    providers = resolve_providers(args.providers)          # fail early, naming what is available
    stage(f"loading {args.factory}")
    model, example = load_factory(args.factory)
    model.eval()
    inputs = _inputs(args, model, example, onnx_path)
    names = [v.name for v in _graph_inputs(onnx.load(onnx_path, load_external_data=False))]
    sections, notes = {}, []
    if args.calib or args.fp16:
        import torch
        tensors = inputs if not isinstance(inputs, str) else tuple(
            torch.from_numpy(a) for a in load_npz(inputs, names))
        stage("report sections" + (" (train/infer gap)" if args.calib else "")
              + (" (fp16 audit)" if args.fp16 else ""))
        sections, notes = extra_sections(args, model, tensors)
    tolerance = _output_tolerances(args, onnx_path)
    stage(f"checking on {', '.join(providers)}")
    report = check(model, inputs, onnx_path, providers=providers,
                   dtypes=("float32", "float16") if args.fp16 else ("float32",),
                   rtol=args.rtol, atol=args.atol, tolerance=tolerance, layer_rtol=args.layer_rtol,
                   localize_layers=True if (args.layers or args.report) else "auto",
                   reference=args.reference, use_library=not args.no_library, sections=sections,
                   input_source=None if isinstance(inputs, str) else f"seeded random, seed {args.seed}")
    report.notes += notes
    stage("done")
    text = report.format(layers="all" if args.layers else "auto")
    doc = report.to_dict()
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.txt").write_text(report.format(layers="all") + "\n")
        (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
        report.plot(out / "layers.png")
        print(f"[report] {out / 'report.txt'}, {out / 'report.json'}, {out / 'layers.png'}", file=sys.stderr)
    print(json.dumps(doc, indent=1) if args.json else text)
    return 0 if report else 1
