"""Producer/consumer relations between module calls, from a traced graph.

:func:`trace_calls` traces the model on the example arguments and returns a
:class:`ModuleGraph`: every call of a module of interest (the BN-family layers and the fold
targets) as a :class:`Call` with its data inputs and outputs (graph values), who produces each
value and who uses it. Two tracers:

1. ``torch.fx`` symbolic tracing with every module of interest (and every registry layer,
   whose forward checks shapes) as a leaf: one ``call_module`` node per call; shapes from
   ``ShapeProp`` on the example arguments.
2. When fx fails (data-dependent Python control flow, shape checks in non-leaf modules, ...):
   ``torch.export.export(..., strict=False)`` on the example arguments. Its ATen nodes carry
   ``nn_module_stack``; the innermost entry names the module whose forward emitted the node
   and its key tells calls apart (``L__self__bn`` then ``L__self__bn@1`` for a second call).
   The nodes of one call form a group; the group's inputs are the values it reads from outside,
   parameters / buffers / constants excluded; its outputs the values used outside.

Limits: the relations hold for the traced path (the example arguments' control flow);
values that pass through anything else (a view, a cat, an activation) are "used by something
else" and block a fold; a module of interest nested inside a registry layer (fx leaf) is not
seen and therefore not folded.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx, nn


@dataclass(eq=False)
class Call:
    path: str                          # dotted path of the module in the model
    key: str                           # unique per call
    nodes: list[fx.Node] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)    # data values read from outside
    outputs: list[fx.Node] = field(default_factory=list)   # values used outside the call


@dataclass
class ModuleGraph:
    method: str                                        # "torch.fx" or "torch.export"
    calls: dict[str, list[Call]]                       # module path -> its calls
    _owner: dict[fx.Node, Call] = field(default_factory=dict)

    def producer(self, value: fx.Node) -> Call | None:
        """The call whose output ``value`` is (None: produced by anything else)."""
        call = self._owner.get(value)
        return call if call is not None and value in call.outputs else None

    def users(self, value: fx.Node) -> list[Call | str]:
        """Who uses ``value`` outside the call producing it: a Call, or a description of any
        other user (an op, the graph output)."""
        own = self._owner.get(value)
        seen, out = set(), []
        for u in value.users:
            call = self._owner.get(u)
            if call is not None and call is own:
                continue
            if call is not None:
                if id(call) not in seen:
                    seen.add(id(call))
                    out.append(call)
            else:
                out.append(describe(u))
        return out

    @staticmethod
    def shape(value: fx.Node) -> tuple[int, ...] | None:
        meta = value.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            return tuple(meta.shape)
        val = value.meta.get("val")
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def describe(node: fx.Node) -> str:
    """A node that is no module call of interest, in words."""
    if node.op == "output":
        return "the graph output"
    if node.op == "placeholder":
        return f"the model input '{node.name}'"
    if node.op == "call_module":
        return f"module {node.target}"
    t = node.target
    name = getattr(t, "__name__", None) or str(t)
    return f"method .{name}()" if node.op == "call_method" else f"op {name}"


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self._leaves or super().is_leaf_module(m, qualname)


def _trace_fx(model: nn.Module, args: tuple, interest: dict[int, str], leaves: set[int]) -> ModuleGraph:
    tracer = _LeafTracer(leaves | set(interest))
    graph = tracer.trace(model)
    if args:  # shapes; without example arguments only the relations are known
        from torch.fx.passes.shape_prop import ShapeProp
        with torch.no_grad():
            ShapeProp(fx.GraphModule(model, graph)).propagate(*args)
    modules = dict(model.named_modules(remove_duplicate=False))
    calls: dict[str, list[Call]] = defaultdict(list)
    owner: dict[fx.Node, Call] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        m = modules.get(node.target)
        if m is None or id(m) not in interest:
            continue
        path = interest[id(m)]
        call = Call(path, f"{path}@{len(calls[path])}", [node], list(node.all_input_nodes), [node])
        calls[path].append(call)
        owner[node] = call
    return ModuleGraph("torch.fx", dict(calls), owner)


def _trace_export(model: nn.Module, args: tuple, canonical: dict[str, str]) -> ModuleGraph:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, args, strict=False)
    graph = ep.graph
    user_inputs = set(ep.graph_signature.user_inputs)
    groups: dict[str, Call] = {}
    owner: dict[fx.Node, Call] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or not stack:
            continue
        key, (path, _cls) = list(stack.items())[-1]
        path = canonical.get(path)
        if path is None:
            continue
        call = groups.get(key)
        if call is None:
            call = groups[key] = Call(path, key)
        call.nodes.append(node)
        owner[node] = call
    for call in groups.values():
        members = set(call.nodes)
        for node in call.nodes:
            for a in node.all_input_nodes:
                if a in members or a in call.inputs:
                    continue
                if a.op == "get_attr" or (a.op == "placeholder" and a.name not in user_inputs):
                    continue  # parameters, buffers, constants
                call.inputs.append(a)
            if any(u not in members for u in node.users):
                call.outputs.append(node)
    calls: dict[str, list[Call]] = defaultdict(list)
    for call in groups.values():
        calls[call.path].append(call)
    return ModuleGraph("torch.export", dict(calls), owner)


def trace_calls(model: nn.Module, args: tuple, interest: dict[int, str], leaves=frozenset(),
                canonical: dict[str, str] | None = None) -> ModuleGraph:
    """Trace ``model`` (eval mode) on ``args``; ``interest`` maps id(module) -> its (canonical)
    path for the modules whose calls are wanted, ``leaves`` are ids of further modules fx must
    not trace into, ``canonical`` maps every path of a module of interest (a module registered
    under several names) to its canonical one. Raises RuntimeError naming both tracers' errors
    when neither works."""
    if canonical is None:
        canonical = {p: p for p in interest.values()}
    try:
        return _trace_fx(model, args, interest, set(leaves))
    except Exception as fx_error:  # fx raises many types (TraceError, TypeError, ...)
        if not args:
            raise RuntimeError(f"torch.fx could not trace the model ({type(fx_error).__name__}: "
                               f"{_first_line(fx_error)}) and there are no example arguments "
                               f"for torch.export") from fx_error
        try:
            return _trace_export(model, args, canonical)
        except Exception as export_error:
            raise RuntimeError(
                f"neither torch.fx ({type(fx_error).__name__}: {_first_line(fx_error)}) nor "
                f"torch.export ({type(export_error).__name__}: {_first_line(export_error)}) "
                f"could trace the model") from export_error


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""
