"""Export a trained model to ONNX with every registered custom-op norm as one
``normexport`` node that carries its ONNX function (so a stock ONNX Runtime still runs it).

Data flow: model (eval) -> each layer matched in the registry with a CustomOp rule has its
forward swapped, for the duration of the trace, for a call of the rule's torch custom op ->
torch.onnx.export (torch.export-based, dynamo=True) with the rules' onnxscript translations
-> post-processing: attach one model-local FunctionProto per op type used (body opset = the
model's default-domain opset), name the source layer in each node's doc_string, check ->
atomic write.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import onnx
import torch
from torch import nn

from . import registry
from ._io import atomic_write_bytes
from .ops import DOMAIN, DOMAIN_VERSION, MIN_OPSET

DEFAULT_OPSET = 20
_TWO_GB = 2**31 - 1


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says why and what to do."""


@dataclass
class CustomNode:
    node: str          # ONNX node name
    op_type: str       # normexport op type
    module: str        # dotted path of the source layer in the model
    layer: str         # class of the source layer


@dataclass
class ExportReport:
    path: Path
    opset: int
    dynamic_batch: bool
    dynamic_spatial: bool = False
    custom_nodes: list[CustomNode] = field(default_factory=list)
    node_counts: Counter = field(default_factory=Counter)
    functions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: normexport.fold.FoldReport of the folded copy that was exported (None: fold=False)
    fold: Any = None

    def __str__(self) -> str:
        from .parity import format_table
        lines = [f"wrote {self.path} (opset {self.opset}, "
                 f"{'dynamic' if self.dynamic_batch else 'static'} batch"
                 f"{', dynamic spatial' if self.dynamic_spatial else ''})"]
        lines.append(format_table(["op", "count"], [[k, str(v)] for k, v in sorted(self.node_counts.items())]))
        if self.custom_nodes:
            lines.append(format_table(["custom node", "op", "from layer", "class"],
                                      [[c.node, c.op_type, c.module, c.layer] for c in self.custom_nodes]))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


#: torch.onnx's (torch.export-based) exporter writes opset 18 and newer.
EXPORT_MIN_OPSET = 18


def _check_model_mode(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if m.training:
            raise ExportError(
                f"export: module {name or '<root>'} ({type(m).__name__}) is in training mode; "
                f"call model.eval() before exporting (normexport exports inference graphs)")


def _check_batch_stats(model: nn.Module) -> None:
    """Refuse a layer that would normalise with batch statistics in eval mode (the registry
    entry's ``eval_batch_stats`` predicate): its exported output would depend on the batch."""
    for name, m in model.named_modules():
        spec = registry.spec_for(m)
        if spec is not None and spec.eval_batch_stats is not None and spec.eval_batch_stats(m):
            raise ExportError(
                f"export: module {name or '<root>'} ({type(m).__name__}) has no running statistics "
                f"(track_running_stats=False): in eval mode it normalises with batch statistics, so "
                f"one sample's output would depend on the rest of the batch. Give it running "
                f"statistics (track_running_stats=True) and recalibrate them on training data (a few "
                f"train-mode forward passes without gradient, momentum=None for an exact average), "
                f"then export")


@contextlib.contextmanager
def _rule_forwards(model: nn.Module, custom_ops: bool, notes: list[str]):
    """Swap, on the instances only and for the duration of the trace, the forward of every
    layer whose registry export rule has a ``call`` (spec.ExportCall: CustomOp when
    ``custom_ops``; StandardOp / Composite always) for that call. A call that raises
    spec.Decompose falls back to the layer's own forward, the reason going to ``notes``."""
    swapped = []
    try:
        for name, m in model.named_modules():
            spec = registry.spec_for(m)
            rule = spec.export if spec is not None else None
            if not isinstance(rule, registry.ExportCall) or rule.call is None:
                continue
            if isinstance(rule, registry.CustomOp) and not custom_ops:
                continue
            if "forward" in vars(m):
                raise ExportError(f"export: module {name} ({type(m).__name__}) has an instance-level "
                                  f"forward override; normexport cannot swap it for its {rule.kind}")
            m.forward = _bind_call(rule.call, m, name or "<root>", notes)
            swapped.append(m)
        yield swapped
    finally:
        for m in swapped:
            vars(m).pop("forward", None)


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _bind_call(call, module: nn.Module, name: str = "", notes: list[str] | None = None):
    """``module.forward`` replaced by ``call(module, ...)``, keeping the signature that
    torch.export reads (via ``__wrapped__``); spec.Decompose -> the class's own forward."""
    def forward(*args, **kwargs):
        try:
            return call(module, *args, **kwargs)
        except registry.Decompose as e:
            note = f"{name} ({type(module).__name__}): {e}"
            if notes is not None and note not in notes:
                notes.append(note)
            return type(module).forward(module, *args, **kwargs)
    return functools.update_wrapper(forward, module.forward)


def _is_constraint_error(e: BaseException) -> bool:
    while e is not None:
        if "Constraints violated" in str(e) or "specializ" in str(e) or type(e).__name__ in (
                "ConstraintViolationError", "UserError"):
            return True
        e = e.__cause__
    return False


def _root_cause(e: BaseException) -> str:
    """The innermost exception's first meaningful line (torch's wrappers add pages of advice)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


#: names of the spatial dims by input rank (dims 2, 3, ... of an (N, C, *spatial) input)
_SPATIAL_NAMES = {3: ("length",), 4: ("height", "width"), 5: ("depth", "height", "width")}


def _dynamic_shapes(args: tuple, dynamic_batch: bool, dynamic_spatial: bool = False,
                    names: Sequence[str] | None = None):
    """torch.export dynamic_shapes: dim 0 of every tensor input ``batch`` (one Dim, shared);
    with ``dynamic_spatial`` the spatial dims of every (N, C, *spatial) float input, one Dim
    per input and dim, named ``<input>_height`` etc. (inputs may differ in size: SPADE's
    segmentation map, AdaIN's style)."""
    if not dynamic_batch and not dynamic_spatial:
        return None
    batch = torch.export.Dim("batch") if dynamic_batch else None
    shapes = []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            shapes.append(None)
            continue
        dims = {0: batch} if batch is not None else {}
        if dynamic_spatial and a.is_floating_point() and a.dim() in _SPATIAL_NAMES:
            prefix = names[i] if names is not None and i < len(names) else f"input{i}"
            prefix = "".join(ch if ch.isalnum() else "_" for ch in prefix)
            for d, dname in enumerate(_SPATIAL_NAMES[a.dim()], start=2):
                if a.shape[d] < 2:
                    raise ExportError(f"export: dynamic_spatial: input {i} has {dname} {a.shape[d]}; "
                                      f"torch.export fixes dims of size 0 or 1, trace with an "
                                      f"example of size >= 2 in every spatial dim")
                dims[d] = torch.export.Dim(f"{prefix}_{dname}", min=2)
        shapes.append(dims or None)
    return tuple(shapes)


def _fixed_spatial_dims(proto: onnx.ModelProto, dynamic, args: tuple) -> list[str]:
    """The spatial dims asked dynamic that came out of torch.onnx.export static (torch.onnx
    specialises a dim that a layer fixes instead of failing): ["x height = 5", ...]."""
    fixed = []
    tensor_dims = [d for a, d in zip(args, dynamic or ()) if isinstance(a, torch.Tensor)]
    for vi, dims in zip(proto.graph.input, tensor_dims):
        for d, dim in (dims or {}).items():
            if d == 0:
                continue
            shape = vi.type.tensor_type.shape.dim
            if d < len(shape) and not shape[d].dim_param:
                fixed.append(f"{vi.name} {dim.__name__.rsplit('_', 1)[-1]} = {shape[d].dim_value}")
    return fixed


def _spatial_culprits(model: nn.Module, args: tuple, dynamic) -> list[str]:
    """Which layers fix a spatial dim: re-trace with torch.export, following the module being
    run (forward hooks) and the shape guards torch adds (its symbolic-shapes log): a guard
    ``Eq(symbol, constant)`` fixes that dim. ["layer a.b (PositionalNorm) at pono.py:111", ...]."""
    stack, found = [], []
    names = {m: n or "<root>" for n, m in model.named_modules()}

    class _Guards(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "[guard added]" in msg and "Eq(" in msg and stack:
                where = msg[msg.find("(", msg.find("[guard added]")) + 1:].split(")")[0].strip()
                if any(t in where for t in ("_subclasses/", "torch/", "_export/", "_prims")):
                    where = ""  # inside torch (a fake kernel): the layer's name says more
                where = "/".join(where.split(" in ")[0].split("/")[-2:])
                m = stack[-1]
                item = f"layer {names[m]} ({type(m).__name__})" + (f" at {where}" if where else "")
                if item not in found:
                    found.append(item)

    def enter(m, inputs):
        stack.append(m)

    def leave(m, inputs, output):
        stack.pop()   # (returns None: a forward hook's return value would replace the output)

    hooks = [m.register_forward_pre_hook(enter) for m in model.modules()]
    hooks += [m.register_forward_hook(leave) for m in model.modules()]
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    handler, old = _Guards(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # torch's own handlers (on this logger or its parents) would print every INFO record
    quiet = []
    lg = logger
    while lg is not None:
        quiet += [(h, h.level) for h in lg.handlers if h is not handler]
        lg = lg.parent if lg.propagate else None
    for h, level in quiet:
        h.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.export.export(model, args, dynamic_shapes=dynamic, strict=False)
    except Exception:
        pass  # the guards logged before the failure are what we want
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        for h, level in quiet:
            h.setLevel(level)
        for h in hooks:
            h.remove()
    return found


def _input_names(model: nn.Module, n: int, given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    import inspect
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return (params + [f"input{i}" for i in range(len(params), n)])[:n]


def _module_of(node: onnx.NodeProto) -> tuple[str, str]:
    meta = {p.key: p.value for p in node.metadata_props}
    scopes, classes = meta.get("pkg.torch.onnx.name_scopes"), meta.get("pkg.torch.onnx.class_hierarchy")
    try:
        import ast
        path = ast.literal_eval(scopes)[-2] if scopes else ""  # entries are full paths
        cls = ast.literal_eval(classes)[-2] if classes else ""
    except (ValueError, SyntaxError, IndexError):
        path, cls = "", ""
    return path, cls


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Attach the function of every ``normexport`` op type used in ``model`` (idempotent)."""
    ops = registry.custom_ops()
    used = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if used and (opset is None or opset < MIN_OPSET):
        raise ExportError(f"export: the normexport function bodies need opset >= {MIN_OPSET}, "
                          f"the model has {opset}")
    have = {(f.domain, f.name) for f in model.functions}
    for op_type in used:
        if op_type not in ops:
            raise ExportError(f"export: the graph holds normexport::{op_type}, which no registry "
                              f"entry defines")
        if (DOMAIN, op_type) not in have:
            model.functions.append(ops[op_type].function(opset))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return used


def export(model: nn.Module, args: Any, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
           dynamic_batch: bool = True, custom_ops: bool = True, dynamic_spatial: bool = False,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           verbose: bool = False, progress: Callable[[str], None] | None = None,
           fold: bool = True) -> ExportReport:
    """Export ``model`` (in eval mode) called on ``args`` to an ONNX file at ``path``.

    custom_ops: emit registered norms as ``normexport`` nodes with function fallbacks
        (False: let torch decompose them into standard ops).
    dynamic_batch: make dim 0 of every tensor input dynamic (the example batch must be > 1
        for torch.export to keep it symbolic; normexport traces with batch 2 when it is 1).
    dynamic_spatial: also make the spatial dims (2, 3, ...) of every floating (N, C, *spatial)
        input dynamic, named ``<input>_height``/``_width`` (``_length``, ``_depth``), one per
        input (example sizes must be >= 2). A model whose layers fix a spatial size (e.g.
        PositionalNorm with a per-position affine) is refused with torch.export's reason.
    progress: called with a stage name ("folding", "tracing", "writing") as export proceeds.
    fold: export a folded copy (normexport.fold: BN family into adjacent conv/linear weights,
        weight norm and cosine weights pre-computed); what could not be folded stays (BN as
        ONNX BatchNormalization) and is named, with the reason, in the report's notes.
    Refused (ExportError, nothing written): a module in training mode; a layer that would use
    batch statistics in eval mode (registry ``eval_batch_stats``: BN family without running
    statistics).
    """
    if not isinstance(model, nn.Module):
        raise ExportError(f"export: expected a torch.nn.Module, got {type(model).__name__}")
    if opset < EXPORT_MIN_OPSET:
        raise ExportError(f"export: opset {opset} is below {EXPORT_MIN_OPSET}, the lowest opset torch's "
                          f"ONNX exporter writes (graphs from older exporters: `normexport fold`, whose "
                          f"normexport nodes work down to opset {MIN_OPSET})")
    _check_model_mode(model)
    _check_batch_stats(model)
    stage = progress or (lambda name: None)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    if dynamic_batch:
        # torch.export specialises a dim of size 1; trace with batch 2 so it stays symbolic.
        args = tuple(a.expand(2, *a.shape[1:]).contiguous()
                     if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a
                     for a in args)
    fold_report = None
    if fold:
        stage("folding")
        from .fold import fold_with_report
        model, fold_report = fold_with_report(model, *args)
    table = registry.translations(custom_ops)
    dynamic = _dynamic_shapes(args, dynamic_batch, dynamic_spatial,
                              _input_names(model, len(args), input_names))
    out = io.StringIO()
    notes: list[str] = []
    stage("tracing")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_rule_forwards(model, custom_ops, notes))
        if not verbose:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(_quiet_logger("torch.onnx._internal.exporter._registration"))
        try:
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=opset, custom_translation_table=table,
                dynamic_shapes=dynamic, input_names=input_names,
                output_names=output_names, verbose=verbose)
        except Exception as e:  # torch's exporter raises many types; keep its message
            hint = ""
            if dynamic_spatial and _is_constraint_error(e):
                hint = ("dynamic_spatial: torch.export cannot keep the spatial dims dynamic (a layer "
                        "fixes them or ties inputs together); export without dynamic_spatial. ")
            raise ExportError(f"export: torch.onnx.export failed for {type(model).__name__}: "
                              f"{hint}{_root_cause(e)}") from e
        proto = program.model_proto
        fixed = _fixed_spatial_dims(proto, dynamic, args) if dynamic_spatial else []
        if fixed:
            culprits = _spatial_culprits(model, args, dynamic)
            raise ExportError(
                f"export: dynamic_spatial: torch.export fixed {', '.join(fixed)}: "
                f"{'; '.join(culprits) or 'a layer'} makes the spatial size a constant (e.g. "
                f"per-position parameters); export without dynamic_spatial, or change that layer")
    report = ExportReport(path=Path(path), opset=opset, dynamic_batch=dynamic_batch,
                          dynamic_spatial=dynamic_spatial)
    report.notes += notes
    if fold_report is not None:
        report.fold = fold_report
        report.notes += [f"not folded: {r.module or '<root>'}: {r.reason}" for r in fold_report.refused]
    report.functions = attach_functions(proto)
    names = {n.name for n in proto.graph.node}
    for node in proto.graph.node:
        report.node_counts[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        if node.domain == DOMAIN:
            mod, cls = _module_of(node)
            node.doc_string = f"normexport::{node.op_type} exported from layer {mod or '<root>'} ({cls})"
            # name the node after its layer: kernel error messages then point at the layer
            new_name = f"{mod or 'root'}/{node.op_type}"
            if new_name not in names:
                names.discard(node.name)
                names.add(new_name)
                node.name = new_name
            report.custom_nodes.append(CustomNode(node.name, node.op_type, mod, cls))
    if proto.ByteSize() > _TWO_GB:
        raise ExportError("export: the model is over 2 GB; external-data output is not supported yet")
    stage("writing")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"export: the exported graph fails onnx.checker, nothing written: {e}") from e
    atomic_write_bytes(path, proto.SerializeToString())
    return report
