"""The rule machinery of the ONNX graph passes: pattern / check / rewrite, onnxscript-rewriter style.

A :class:`Rule` names the op types it is anchored at. For every node of those types the driver
calls :meth:`Rule.match`, which either returns a :class:`Match` (the nodes the rewrite
replaces, plus whatever the rewrite needs: constants, attributes) or a :class:`NoMatch` that
says *why* not (``normexport fold --explain`` prints these). :meth:`Rule.rewrite` then builds
the replacement; the driver detaches the matched nodes, removes what became dead, keeps the
graph topologically sorted, and carries the node metadata of the matched output node over to
the replacement (so layer names survive a rewrite).

Rules work on an onnx-graphsurgeon graph through a :class:`Context`, which answers the
questions every rule asks: is this tensor a constant (and its value), who consumes it, is it a
graph output, what are its shape and element type (from ONNX shape inference), what is the
model's opset. A tensor that is a graph input is never a constant, even when an initializer of
the same name exists (IR < 4 models list overridable initializers as inputs).

The numerics live elsewhere: folds call ``normexport.fold.formulas`` (the one implementation of
each fold formula, shared with the module-level folder); fusions emit ``normexport`` nodes whose
contract and function body are in ``normexport.ops``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs


class PassError(ValueError):
    """A graph the passes cannot take (unreadable file, invalid model, bad option): the message
    names the file, node or option."""


@dataclass
class NoMatch:
    """Why a rule did not apply at a node. Falsy, so ``if not (m := rule.match(...))`` reads well."""

    reason: str

    def __bool__(self) -> bool:
        return False


class Match:
    """A successful match: ``nodes`` (in graph order; the last one produces the pattern's output)
    are replaced by the rewrite; every other keyword becomes an attribute for the rewrite."""

    def __init__(self, nodes: Sequence[gs.Node], **captures: Any):
        self.nodes = list(nodes)
        for k, v in captures.items():
            setattr(self, k, v)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Match({[n.name for n in self.nodes]})"


class Rule:
    """One rewrite. Subclasses set ``name`` (kebab-case, used by ``--rules``), ``summary`` (one
    line), ``anchors`` (op types where matching starts, ``"domain::Op"`` for a non-default
    domain) and implement :meth:`match` and :meth:`rewrite`.

    ``rewrite`` returns the new nodes; it must take over the matched output tensors (give the
    new node the old output ``gs.Variable`` objects) so that consumers stay connected. It must
    not remove nodes itself: the driver detaches ``match.nodes`` afterwards."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    anchors: ClassVar[tuple[str, ...]] = ()

    def match(self, ctx: "Context", node: gs.Node) -> Match | NoMatch:
        raise NotImplementedError

    def rewrite(self, ctx: "Context", match: Match) -> list[gs.Node]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


def _op_key(node: gs.Node) -> str:
    return node.op if node.domain in ("", "ai.onnx", None) else f"{node.domain}::{node.op}"


class Context:
    """The graph under rewrite and the queries rules need."""

    def __init__(self, graph: gs.Graph, model: onnx.ModelProto):
        self.graph = graph
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        self._counter = itertools.count()
        self._names = {n.name for n in graph.nodes} | set(graph.tensors().keys())
        self.provenance: dict[str, str] = {}   # new node name -> original node name (metadata)

    # ---- tensors -----------------------------------------------------------------------
    def is_graph_input(self, t: gs.Tensor) -> bool:
        return any(t is i or t.name == i.name for i in self.graph.inputs)

    def is_graph_output(self, t: gs.Tensor) -> bool:
        return any(t is o or t.name == o.name for o in self.graph.outputs)

    def const(self, t: gs.Tensor | None) -> np.ndarray | None:
        """The value of ``t`` if it is a constant (initializer or Constant node output), else None."""
        if t is None or self.is_graph_input(t):
            return None
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and t.inputs[0].domain in ("", "ai.onnx", None):
            attrs = t.inputs[0].attrs
            if "value" in attrs:
                v = attrs["value"]
                return np.asarray(v.values if isinstance(v, gs.Constant) else v)
            for k, dt in (("value_float", np.float32), ("value_int", np.int64)):
                if k in attrs:
                    return np.asarray(attrs[k], dtype=dt)
            for k, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
                if k in attrs:
                    return np.asarray(list(attrs[k]), dtype=dt)
        return None

    def scalar(self, t: gs.Tensor | None) -> float | None:
        """A constant holding a single value (any shape with one element), as a Python float."""
        v = self.const(t)
        if v is None or v.size != 1:
            return None
        return float(v.reshape(()))

    def producer(self, t: gs.Tensor | None) -> gs.Node | None:
        return t.inputs[0] if t is not None and len(t.inputs) == 1 else None

    def consumers(self, t: gs.Tensor) -> list[gs.Node]:
        return list(t.outputs)

    def private(self, t: gs.Tensor, consumer: gs.Node) -> str | None:
        """None if ``consumer`` is the only reader of ``t`` and ``t`` is not a graph output;
        otherwise the reason (for a NoMatch)."""
        if self.is_graph_output(t):
            return f"'{t.name}' is a graph output"
        others = [n for n in t.outputs if n is not consumer]
        if others:
            return f"'{t.name}' is also used by {', '.join(repr(n.name or n.op) for n in others[:3])}"
        return None

    def shape(self, t: gs.Tensor) -> tuple | None:
        return tuple(t.shape) if t.shape is not None else None

    def rank(self, t: gs.Tensor) -> int | None:
        return len(t.shape) if t.shape is not None else None

    def dtype(self, t: gs.Tensor):
        return np.dtype(t.dtype) if t.dtype is not None else None

    # ---- building ----------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            name = f"{hint}_nx{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def constant(self, hint: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(hint), np.ascontiguousarray(values))

    def node(self, op: str, inputs: list, outputs: list, *, name: str | None = None,
             domain: str | None = None, attrs: dict | None = None, origin: gs.Node | None = None) -> gs.Node:
        """Add a node to the graph; ``origin`` is the matched node whose metadata (layer name)
        the new node inherits."""
        n = gs.Node(op=op, name=name or self.fresh(op), domain=domain, attrs=attrs or {},
                    inputs=inputs, outputs=outputs)
        self.graph.nodes.append(n)
        if origin is not None:
            self.provenance[n.name] = self.provenance.get(origin.name, origin.name)
        return n


@dataclass
class Explanation:
    rule: str
    node: str
    op: str
    reason: str


@dataclass
class Applied:
    rule: str
    nodes: list[str]          # the matched nodes' names
    new_nodes: list[str]


@dataclass
class RuleRun:
    """What the driver did: the rewrites in order, and (with ``explain``) why the other anchors
    did not match."""

    applied: list[Applied] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.applied:
            out[a.rule] = out.get(a.rule, 0) + 1
        return out


def _detach(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def apply_rule(ctx: Context, rule: Rule, run: RuleRun, *, explain: bool = False, max_rounds: int = 8) -> int:
    """Apply ``rule`` wherever it matches (repeating until nothing changes, at most
    ``max_rounds`` sweeps); returns the number of rewrites."""
    anchors = set(rule.anchors)
    total = 0
    for _ in range(max_rounds):
        ctx.graph.toposort()
        done_here = 0
        alive = set(map(id, ctx.graph.nodes))
        for node in list(ctx.graph.nodes):
            if _op_key(node) not in anchors or id(node) not in alive or not node.outputs:
                continue
            m = rule.match(ctx, node)
            if not m:
                if explain:
                    run.explanations.append(Explanation(rule.name, node.name, _op_key(node), m.reason))
                continue
            matched = list(m.nodes)
            names = [n.name for n in matched]
            origin = matched[-1].name
            new = rule.rewrite(ctx, m)
            for n in new:
                ctx.provenance.setdefault(n.name, ctx.provenance.get(origin, origin))
            for n in matched:
                _detach(n)
                alive.discard(id(n))
            run.applied.append(Applied(rule.name, names, [n.name for n in new]))
            done_here += 1
        ctx.graph.cleanup(remove_unused_graph_inputs=False)
        total += done_here
        if not done_here:
            break
        if explain:  # a later sweep re-explains the anchors that still do not match
            run.explanations = [e for e in run.explanations if e.rule != rule.name]
    return total


def import_graph(model: onnx.ModelProto) -> tuple[gs.Graph, Context]:
    """``model`` with inferred shapes, as a graphsurgeon graph and its Context."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is a help, not a requirement
        inferred = model
    graph = gs.import_onnx(inferred)
    return graph, Context(graph, model)


def export_graph(ctx: Context, original: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph as a ModelProto that keeps what graphsurgeon drops: node metadata
    (by name, or inherited through ``ctx.provenance``), model metadata, producer, doc strings,
    IR version and the opset imports of other domains."""
    ctx.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(ctx.graph, do_type_check=False)
    meta = {n.name: list(n.metadata_props) for n in original.graph.node if n.name}
    for n in out.graph.node:
        src = n.name if n.name in meta else ctx.provenance.get(n.name)
        if src in meta and not n.metadata_props:
            n.metadata_props.extend(meta[src])
    # value_info entries are hints that may be stale after a rewrite: keep only shapes that
    # ONNX shape inference can re-derive (it does so at load time anyway)
    del out.graph.value_info[:]
    out.ir_version = original.ir_version
    out.producer_name, out.producer_version = original.producer_name, original.producer_version
    out.domain, out.model_version, out.doc_string = original.domain, original.model_version, original.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    have = {o.domain for o in out.opset_import}
    for o in original.opset_import:
        if o.domain not in have:
            out.opset_import.append(o)
    return out


def run_rules(model: onnx.ModelProto, rules: Iterable[Rule], *, explain: bool = False
              ) -> tuple[onnx.ModelProto, RuleRun]:
    """Apply ``rules`` in order to a copy of ``model``; returns the new model and the run log.
    No verification here (see ``normexport.passes.rewrite``)."""
    graph, ctx = import_graph(model)
    run = RuleRun()
    for rule in rules:
        apply_rule(ctx, rule, run, explain=explain)
    return export_graph(ctx, model), run
