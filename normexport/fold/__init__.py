"""Folding before export (NORMS.md rows 2-6, 10, 13): normalizations whose inference form is a
fixed affine map or a fixed weight are folded into the neighbouring layer's weights, so the
exported graph holds no node for them.

``fold(model, *example_args)`` returns an eval-mode deep copy (the user's model is untouched):

1. Weight folds (module-local): weight norm -> plain weight ``g v / ||v||``; cosine
   normalization -> an eval-only layer with the weight pre-normalized (``modules.py``).
2. BN folds: every module whose registry entry exports ``Fold("bn")`` (BN, SyncBN, Batch
   Renorm, Cross-Iteration BN, CmBN: their inference form is ``y = s x + t`` per channel,
   ``s = gamma / sqrt(var + eps)``, ``t = beta - mean s``, from the entry's ``bn_params`` or
   the BN attributes) is folded into an adjacent plain ``Conv1d/2d/3d``,
   ``ConvTranspose1d/2d/3d`` or ``Linear`` and replaced by ``nn.Identity``:

   - after the layer (always exact), preferred;
   - before a Linear (BN over its 2-D input's features) or before a Conv without zero padding
     (padding 0, or reflect / replicate / circular padding, which commute with a per-channel
     affine map); before a zero-padded conv only when the shift t is exactly 0. Never before a
     ConvTranspose (t reaches each output position through a position-dependent number of
     kernel taps, which no bias can express).

   Adjacency (``graph.py``): the model is traced on the example arguments with ``torch.fx``
   (BN-family layers, fold targets and registry layers as leaves, shapes by ShapeProp), or,
   where fx fails, with ``torch.export.export(strict=False)``, whose nodes' ``nn_module_stack``
   maps them to module calls. A fold needs a one-to-one edge: the BN's input is the layer's
   only output and nothing else reads it (after), or the BN's output is read by the layer
   alone (before); the BN and the layer are each called exactly once (a shared module is never
   folded, it would change its other calls). The relations are those of the traced path: a
   model whose control flow depends on its input is folded for the example's path.

Anything not folded is left in place (it exports as ONNX BatchNormalization) and
:class:`FoldReport` says which module and why. The formulas (float64, cast back to the weight
dtype) live in ``formulas.py``, the one implementation shared with graph-level passes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .. import registry
from ..spec import Fold
from . import formulas
from .graph import Call, ModuleGraph, describe, trace_calls
from .modules import WEIGHT_FOLDS, PrenormalizedCosineConv2d, PrenormalizedCosineLinear

__all__ = ["fold", "fold_with_report", "FoldReport", "FoldedBN", "Refused", "WeightFolded",
           "bn_inference_params", "formulas", "PrenormalizedCosineLinear",
           "PrenormalizedCosineConv2d"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TARGETS = _CONV + _CONV_T + (nn.Linear,)


class FoldedBN(NamedTuple):
    bn: str            # path of the BN-family module (now nn.Identity)
    into: str          # path of the layer whose weights absorbed it
    position: str      # "after" (BN after the layer) or "before"


class WeightFolded(NamedTuple):
    module: str
    how: str


class Refused(NamedTuple):
    module: str
    reason: str


@dataclass
class FoldReport:
    folded: list[FoldedBN] = field(default_factory=list)
    weights: list[WeightFolded] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    #: how adjacency was found: "torch.fx", "torch.export", or "" (no BN-family module)
    adjacency: str = ""

    def __str__(self) -> str:
        from ..parity import format_table
        parts = []
        if self.folded:
            parts.append(format_table(["BN", "folded into", "position"],
                                      [[f.bn, f.into, f.position] for f in self.folded]))
        if self.weights:
            parts.append(format_table(["layer", "weight fold"],
                                      [[w.module or "<root>", w.how] for w in self.weights]))
        if self.refused:
            parts.append(format_table(["not folded", "reason"],
                                      [[r.module or "<root>", r.reason] for r in self.refused]))
        if not parts:
            parts.append("nothing to fold")
        if self.adjacency:
            parts.append(f"(adjacency from {self.adjacency})")
        return "\n".join(parts)


def bn_inference_params(module: nn.Module, rule: Fold | None = None) -> tuple | None:
    """``(mean, var, eps, gamma, beta)`` of a BN-family module's inference form, or None when
    it has none (no running statistics: eval mode would use batch statistics)."""
    if rule is not None and rule.bn_params is not None:
        return rule.bn_params(module)
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    return mean, var, module.eps, getattr(module, "weight", None), getattr(module, "bias", None)


def fold(model: nn.Module, *example_args) -> nn.Module:
    """An eval-mode copy of ``model`` with its BN-family layers folded into adjacent
    conv/linear weights and its weight norms / cosine norms folded; see the module docstring.
    ``example_args``: a forward call's positional arguments (for tracing and shapes)."""
    return fold_with_report(model, *example_args)[0]


def fold_with_report(model: nn.Module, *example_args) -> tuple[nn.Module, FoldReport]:
    """As :func:`fold`, with a :class:`FoldReport` of what was folded and what was not, why."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold: expected a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    report = FoldReport()
    folded = _fold_weights(folded, report)
    _fold_bns(folded, example_args, report)
    return folded, report


# ---- helpers --------------------------------------------------------------------------------

def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """id(module) -> every path it is registered under (first = canonical)."""
    out: dict[int, list[str]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        out.setdefault(id(m), []).append(path)
    return out


def _replace(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path``; returns the root (``new`` itself for path "")."""
    if path == "":
        return new
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)
    return model


def _label(path: str, m: nn.Module) -> str:
    return f"{path or '<root>'} ({type(m).__name__})"


def _fold_weights(model: nn.Module, report: FoldReport) -> nn.Module:
    """Weight norm / cosine folds in place; returns the root (replaced when it is one)."""
    root = model
    aliases = _aliases(model)
    for path, m in list(model.named_modules()):
        spec = registry.spec_for(m)
        if spec is None:
            continue
        handler = WEIGHT_FOLDS.get(spec.name)
        if handler is None:
            if isinstance(spec.export, Fold) and spec.export.target == "weight":
                report.refused.append(Refused(path, f"no weight fold implemented for registry entry "
                                                    f"{spec.name!r} ({type(m).__name__})"))
            continue
        try:
            new = handler(m)
        except Exception as e:  # an unsupported variant: keep the layer, say why
            report.refused.append(Refused(path, f"weight fold failed: {type(e).__name__}: {e}"))
            continue
        if new is not m:
            for p in aliases[id(m)]:
                root = _replace(root, p, new)
        how = "weight norm -> plain weight" if spec.name == "weightnorm" else \
            f"cosine norm -> {type(new).__name__} (weight pre-normalized)"
        report.weights.append(WeightFolded(path, how))
    return root


class _Bn(NamedTuple):
    path: str
    module: nn.Module
    params: tuple | None


def _fold_bns(model: nn.Module, args: tuple, report: FoldReport) -> None:
    bns: list[_Bn] = []
    for path, m in model.named_modules():
        spec = registry.spec_for(m)
        if spec is not None and isinstance(spec.export, Fold) and spec.export.target == "bn":
            bns.append(_Bn(path, m, bn_inference_params(m, spec.export)))
    if not bns:
        return
    if bns[0].path == "":  # the model is one BN-family layer: nothing next to it
        report.refused.append(Refused("", "the model is this layer alone: no adjacent "
                                          "Conv/ConvTranspose/Linear to fold into"))
        return
    aliases = _aliases(model)
    interest = {id(m): aliases[id(m)][0] for _, m in model.named_modules() if type(m) in _TARGETS}
    interest.update({id(b.module): aliases[id(b.module)][0] for b in bns})
    leaves = {id(m) for _, m in model.named_modules() if registry.spec_for(m) is not None}
    alias_to_canonical = {p: interest[i] for i, ps in aliases.items() if i in interest for p in ps}
    try:
        graph = trace_calls(model, tuple(args), interest, leaves, alias_to_canonical)
    except RuntimeError as e:
        report.refused.extend(Refused(b.path, f"adjacency unknown: {e}") for b in bns)
        return
    report.adjacency = graph.method
    modules = dict(model.named_modules())
    for bn in bns:
        if bn.params is None:
            report.refused.append(Refused(bn.path, "no running statistics (eval mode normalizes with "
                                                   "batch statistics): no fixed affine map to fold"))
            continue
        reason = _try_fold(graph, modules, bn, report)
        if reason is not None:
            report.refused.append(Refused(bn.path, reason))
        else:
            for p in aliases[id(bn.module)]:
                _replace(model, p, nn.Identity())


def _describe(graph: ModuleGraph, value) -> str:
    call = graph.producer(value)
    return call.path if call is not None else describe(value)


def _users_text(users) -> str:
    return ", ".join(u.path if isinstance(u, Call) else u for u in users) or "nothing"


def _try_fold(graph: ModuleGraph, modules, bn: _Bn, report: FoldReport) -> str | None:
    """Fold ``bn`` if exact; return None when folded, else the reason."""
    calls = graph.calls.get(bn.path, [])
    if not calls:
        return (f"no call of it in the traced forward ({graph.method}): not called on the example "
                f"arguments, or called inside a registry layer traced as one unit")
    if len(calls) > 1:
        return f"called {len(calls)} times (a shared module is never folded)"
    (call,) = calls
    if len(call.inputs) != 1 or len(call.outputs) != 1:
        return f"the call has {len(call.inputs)} inputs and {len(call.outputs)} outputs, expected 1 and 1"
    mean, var, eps, gamma, beta = bn.params
    s, t = formulas.bn_scale_shift(mean, var, eps, gamma, beta)
    after = _fold_after(graph, modules, call, s, t, report, bn.path)
    if after is None:
        return None
    before = _fold_before(graph, modules, call, s, t, report, bn.path)
    if before is None:
        return None
    return f"after: {after}; before: {before}"


def _shared(graph: ModuleGraph, path: str) -> str | None:
    n = len(graph.calls.get(path, []))
    return f"{path} is called {n} times (shared)" if n > 1 else None


def _set(layer: nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
    layer.weight = nn.Parameter(w, requires_grad=layer.weight.requires_grad)
    rg = layer.bias.requires_grad if layer.bias is not None else layer.weight.requires_grad
    layer.bias = nn.Parameter(b, requires_grad=rg)


def _fold_after(graph, modules, call: Call, s, t, report, bn_path) -> str | None:
    x = call.inputs[0]
    prod = graph.producer(x)
    if prod is None:
        return f"its input comes from {_describe(graph, x)}, not a Conv/ConvTranspose/Linear"
    layer = modules[prod.path]
    if type(layer) not in _TARGETS:
        return f"its input comes from {_label(prod.path, layer)}, not a plain Conv/ConvTranspose/Linear"
    if (why := _shared(graph, prod.path)) is not None:
        return why
    others = [u for u in graph.users(x) if u is not call]
    if others or prod.outputs != [x]:
        return (f"the output of {prod.path} is also used by {_users_text(others)}; folding would "
                f"change their input")
    if isinstance(layer, nn.Linear):
        shape = graph.shape(x)
        if shape is None or len(shape) != 2:
            return (f"{prod.path} (Linear) output has shape {shape}: the BN normalizes dim 1, the "
                    f"Linear's features are the last dim (folded only for 2-D (N, features))")
        w, b = formulas.fold_bn_after_linear(layer.weight, layer.bias, s, t)
    else:
        w, b = formulas.fold_bn_after_conv(layer.weight, layer.bias, s, t,
                                           transposed=isinstance(layer, _CONV_T), groups=layer.groups)
    _set(layer, w, b)
    report.folded.append(FoldedBN(bn_path, prod.path, "after"))
    return None


def _zero_padded(conv: nn.Module) -> bool:
    if conv.padding_mode != "zeros":
        return False  # reflect / replicate / circular pad with input values
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
    return any(conv.padding)


def _fold_before(graph, modules, call: Call, s, t, report, bn_path) -> str | None:
    y = call.outputs[0]
    users = graph.users(y)
    if len(users) != 1 or not isinstance(users[0], Call):
        return f"its output is used by {_users_text(users)}, not by one Conv/Linear alone"
    cons = users[0]
    layer = modules[cons.path]
    if type(layer) not in _TARGETS:
        return f"its output goes to {_label(cons.path, layer)}, not a plain Conv/Linear"
    if (why := _shared(graph, cons.path)) is not None:
        return why
    if cons.inputs != [y]:
        return f"{cons.path} has other inputs besides the BN's output"
    if isinstance(layer, _CONV_T):
        return (f"{_label(cons.path, layer)} follows it: a BN before a ConvTranspose is not folded "
                f"(its shift reaches each output through a position-dependent number of kernel "
                f"taps, which no bias can express)")
    if isinstance(layer, nn.Linear):
        shape = graph.shape(y)
        if shape is None or len(shape) != 2:
            return (f"its output of shape {shape} feeds {cons.path} (Linear), which mixes the last "
                    f"dim, not the BN's channels (folded only for 2-D (N, features))")
        w, b = formulas.fold_bn_before_linear(layer.weight, layer.bias, s, t)
    else:
        if _zero_padded(layer) and bool((t != 0).any()):
            return (f"{_label(cons.path, layer)} zero-pads its input: the padded taps would see the "
                    f"BN's shift t = beta - gamma mean / sqrt(var + eps) instead of 0 (not exact)")
        w, b = formulas.fold_bn_before_conv(layer.weight, layer.bias, s, t, groups=layer.groups)
    _set(layer, w, b)
    report.folded.append(FoldedBN(bn_path, cons.path, "before"))
    return None
