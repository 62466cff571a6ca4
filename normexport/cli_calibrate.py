"""``normexport recalibrate`` and ``normexport audit-fp16``: the statistics tools of
:mod:`normexport.calibrate` and :mod:`normexport.fp16audit` on a model from a factory
(``PKG.MODULE:FACTORY``, loaded as ``normexport export`` does)."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import sys

from .cli_export import UsageError, _draw, _example_specs, load_factory, parse_input_spec

RECALIBRATE_EPILOG = """\
--data CALIB.npz: one array per positional forward argument of the model, in the order they
  were saved (np.savez(path, input=x) or np.savez(path, x, labels)), each holding the whole
  calibration set along dim 0 (all the same length). Floating arrays are cast to the model's
  floating dtype, integer ones to int64. The set is cut into batches of --batch-size along
  dim 0 (the last one may be smaller); --num-batches takes the first N.

Precise BN (normexport.calibrate.recalibrate): every BN-family layer's running mean and variance
become the exact statistics of its input over the whole calibration set, layer after layer in
forward order with the model in eval mode (layer k sees layers 1..k-1 already recalibrated).
Only running_mean / running_var change; the state dict is written atomically to --out.
Exit status: 0 written and no layer flagged after; 1 written, a layer still flagged (e.g. not
selected); 2 bad arguments, factory or data (nothing written).
"""

AUDIT_EPILOG = """\
Runs the model (float32, eval mode) on random inputs of --input-shape (or the factory's example
inputs) with hooks on every norm layer of the registry, and reports per layer: max |input| and
|output|, the largest statistic the layer computes (variance / mean of squares, per its
reduction) and the sum of squares a float16 kernel without float accumulation would form, BN
running variances and folded scales gamma / sqrt(var + eps) and shifts vs float16's range
(65504) and smallest normal (6.1e-5), and the error of the layer run with float16 storage (input,
parameters, buffers and output rounded to float16, float32 arithmetic) against float64.
Exit status: 0 every layer can run in float16; 1 a layer must stay in float32 (reasons
printed); 2 bad arguments or factory.
"""


def add_parsers(sub) -> None:
    s = sub.add_parser("recalibrate", help="precise BN: re-estimate BN-family running statistics on "
                       "calibration data; prints the train/infer gap before / after",
                       description="Re-estimate the running statistics of every BN-family layer of "
                                   "PKG.MODULE:FACTORY's model on the calibration set (exact "
                                   "population statistics), write the state dict.",
                       epilog=RECALIBRATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("factory", metavar="PKG.MODULE:FACTORY")
    s.add_argument("--data", required=True, metavar="CALIB.npz", help="calibration inputs (see below)")
    s.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    s.add_argument("--num-batches", type=int, default=None, help="use the first N batches only")
    s.add_argument("--out", required=True, metavar="STATE.pt", help="where the state dict goes")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    s.set_defaults(fn=run_recalibrate)

    s = sub.add_parser("audit-fp16", help="which norm layers can run in float16 and which must stay "
                       "in float32, and why",
                       description="float16 audit of every norm layer of PKG.MODULE:FACTORY's model.",
                       epilog=AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("factory", metavar="PKG.MODULE:FACTORY")
    s.add_argument("--input-shape", action="append", default=[], metavar="SHAPE[:DTYPE[:HIGH]]",
                   help="one per forward argument, as for `normexport export`")
    s.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    s.set_defaults(fn=run_audit)


# ---- recalibrate ------------------------------------------------------------------------------

def _forward_arity(model) -> tuple[int, int | None]:
    """(required, maximum or None for *args) positional arguments of model.forward."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return 0, None
    req, most = 0, 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            most = None
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if most is not None:
                most += 1
            if p.default is p.empty:
                req += 1
    return req, most


def _float_dtype(model):
    import torch
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def load_npz(path: str, model, example, batch_size: int, num_batches: int | None):
    """The calibration batches (list of argument tuples) from an .npz; UsageError naming the
    array for anything wrong."""
    import numpy as np
    import torch
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = [(name, f[name]) for name in f.files]
    except FileNotFoundError:
        raise UsageError(f"--data {path}: no such file") from None
    except Exception as e:   # not a zip / npz, pickled objects, ...
        raise UsageError(f"--data {path}: not a readable .npz of arrays ({e})") from None
    if not arrays:
        raise UsageError(f"--data {path}: the file holds no arrays")
    names = ", ".join(f"{n!r} {tuple(a.shape)} {a.dtype}" for n, a in arrays)
    if example is not None:
        want_lo = want_hi = len(example)
        what = f"{len(example)} (the factory's example inputs)"
    else:
        want_lo, want_hi = _forward_arity(model)
        what = (f"{want_lo}" if want_hi == want_lo else
                f"{want_lo} to {want_hi if want_hi is not None else 'any'}") + " (forward's signature)"
    if len(arrays) < want_lo or (want_hi is not None and len(arrays) > want_hi):
        raise UsageError(f"--data {path}: {len(arrays)} arrays ({names}) but the model takes {what} "
                         f"positional inputs: save one array per forward argument")
    n0 = None
    fdtype = _float_dtype(model)
    tensors = []
    for i, (name, a) in enumerate(arrays):
        if a.ndim < 1:
            raise UsageError(f"--data {path}: array {name!r} is a scalar; every array needs the samples "
                             f"along dim 0")
        if a.dtype.kind not in "fiub":
            raise UsageError(f"--data {path}: array {name!r} has dtype {a.dtype}; expected numbers")
        if n0 is None:
            n0, first = a.shape[0], name
        elif a.shape[0] != n0:
            raise UsageError(f"--data {path}: array {name!r} has {a.shape[0]} samples (dim 0), "
                             f"{first!r} has {n0}: every array holds the same samples")
        if example is not None and i < len(example):
            ex = example[i]
            ex_shape = tuple(ex.shape)
            bad = len(ex_shape) != a.ndim or (a.ndim >= 2 and ex_shape[1] != a.shape[1])
            if bad:
                raise UsageError(f"--data {path}: array {name!r} (input {i}) has shape {tuple(a.shape)}; "
                                 f"the model's input {i} is like {ex_shape} (the factory's example): "
                                 f"expected {len(ex_shape)} dims"
                                 + (f" with {ex_shape[1]} channels in dim 1" if len(ex_shape) >= 2 else ""))
        t = torch.from_numpy(np.ascontiguousarray(a))
        t = t.to(fdtype) if a.dtype.kind == "f" else (t.to(torch.int64) if a.dtype.kind in "iu" else t)
        tensors.append(t)
    if n0 == 0:
        raise UsageError(f"--data {path}: the arrays hold no samples")
    batches = [tuple(t[s:s + batch_size] for t in tensors) for s in range(0, n0, batch_size)]
    return batches[:num_batches] if num_batches is not None else batches


def run_recalibrate(args) -> int:
    try:
        return _run_recalibrate(args)
    except UsageError as e:
        print(f"normexport recalibrate: error: {e}", file=sys.stderr)
        return 2


def _run_recalibrate(args) -> int:
    import torch

    from ._io import atomic_write_bytes
    from .calibrate import bn_family_layers, recalibrate
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_batches is not None and args.num_batches < 1:
        raise UsageError(f"--num-batches must be >= 1, got {args.num_batches}")
    model, example = load_factory(args.factory)
    if not bn_family_layers(model):
        raise UsageError(f"{args.factory}: {type(model).__name__} has no BN-family layer with running "
                         f"statistics (BatchNorm, SyncBatchNorm, BatchRenorm, CmBN, Cross-Iteration "
                         f"BN, Switchable Norm's BN branch, conditional BN, SPADE in BN mode, "
                         f"InstanceNorm with track_running_stats): nothing to recalibrate")
    ex = _example_specs(example)
    ex = tuple(e if isinstance(e, torch.Tensor) else torch.zeros(e.shape) for e in ex) if ex else None
    batches = load_npz(args.data, model, ex, args.batch_size, args.num_batches)
    model.eval()
    try:
        report = recalibrate(model, batches)
    except (ValueError, TypeError, RuntimeError, IndexError) as e:
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in batches[0])
        raise UsageError(f"the model rejected the calibration data (first batch: {shapes}): {e}") from None
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out = atomic_write_bytes(args.out, buf.getvalue())
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.format())
        print(f"wrote {out} (state dict; load it with model.load_state_dict(torch.load(path)))")
    return 0 if report.ok else 1


# ---- audit-fp16 -----------------------------------------------------------------------------------

def run_audit(args) -> int:
    try:
        return _run_audit(args)
    except UsageError as e:
        print(f"normexport audit-fp16: error: {e}", file=sys.stderr)
        return 2


def _run_audit(args) -> int:
    import torch

    from .fp16audit import fp16_audit
    specs = tuple(parse_input_spec(t) for t in args.input_shape)
    model, example = load_factory(args.factory)
    specs = specs or _example_specs(example)
    if not specs:
        raise UsageError(f"{args.factory} gives no example inputs: pass --input-shape for each forward "
                         f"argument (e.g. --input-shape 8,3,224,224)")
    inputs = _draw(specs, torch.Generator().manual_seed(args.seed))
    model.eval()
    try:
        report = fp16_audit(model, inputs)
    except (ValueError, TypeError, RuntimeError, IndexError) as e:
        shapes = ", ".join(f"{tuple(t.shape)}" for t in inputs)
        raise UsageError(f"the model rejected the inputs ({shapes}): {e}") from None
    print(json.dumps(report.to_dict()) if args.json else report.format())
    return 0 if report.ok else 1
