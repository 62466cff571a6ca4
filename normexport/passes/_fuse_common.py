"""Helpers shared by the fusion rules (``fuse_groupnorm``, ``fuse_frn``, ``fuse_adain``,
``fuse_spade``): opset check, reduce axes, per-channel constants, static shape arithmetic, the
``1 / sqrt(...)`` forms torch emits, and the emission of one ``normexport`` node.

Every helper that can fail returns a reason string (or a :class:`NoMatch`) instead of raising:
the rules pass the reason on, so ``--explain`` says exactly which check failed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..ops._onnx import DOMAIN, MIN_OPSET
from .base import Context, Match, NoMatch

_DEFAULT = ("", "ai.onnx", None)


def is_op(node: gs.Node | None, *ops: str) -> bool:
    return node is not None and node.op in ops and node.domain in _DEFAULT


def opset_reason(ctx: Context) -> str | None:
    if ctx.opset is None or ctx.opset < MIN_OPSET:
        return (f"model opset {ctx.opset} < {MIN_OPSET}: the normexport function bodies need "
                f"opset >= {MIN_OPSET} (convert the model first)")
    return None


def tname(t: gs.Tensor) -> str:
    return t.name or "<unnamed>"


def nname(n: gs.Node) -> str:
    return n.name or n.op


def is_empty(t: gs.Tensor | None) -> bool:
    return t is None or (isinstance(t, gs.Variable) and not t.name)


def other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    """The other operand of a binary node of which ``t`` is one."""
    ins = list(node.inputs)
    if len(ins) != 2 or (ins[0] is t and ins[1] is t):
        return None
    if ins[0] is t:
        return ins[1]
    if ins[1] is t:
        return ins[0]
    return None


def only_consumer(ctx: Context, t: gs.Tensor) -> tuple[gs.Node | None, str | None]:
    """(the single consumer of ``t``, None) or (None, reason)."""
    if ctx.is_graph_output(t):
        return None, f"'{tname(t)}' is a graph output"
    users = ctx.consumers(t)
    if len(users) != 1:
        return None, f"'{tname(t)}' has {len(users)} consumers, expected 1"
    return users[0], None


def private_to(ctx: Context, t: gs.Tensor, nodes: Iterable[gs.Node]) -> str | None:
    """None if every reader of ``t`` is in ``nodes`` and ``t`` is not a graph output."""
    if ctx.is_graph_output(t):
        return f"'{tname(t)}' is a graph output"
    ids = {id(n) for n in nodes}
    others = [n for n in t.outputs if id(n) not in ids]
    if others:
        return f"'{tname(t)}' is also used by {', '.join(repr(nname(n)) for n in others[:3])}"
    return None


def static_shape(ctx: Context, t: gs.Tensor) -> tuple | None:
    """Shape with ints for static dims and strings (symbols) or None for the others."""
    s = ctx.shape(t)
    if s is None:
        return None
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) and d else None)
                 for d in s)


def same_dim(a, b) -> bool:
    return a is not None and b is not None and a == b


def reduce_axes(ctx: Context, node: gs.Node) -> tuple[tuple[int, ...], int] | str:
    """(axes normalised to the input's rank, sorted; keepdims) of a ReduceMean, or a reason."""
    rank = ctx.rank(node.inputs[0])
    if rank is None:
        return f"rank of '{tname(node.inputs[0])}' (input of {nname(node)}) is unknown"
    keepdims = int(node.attrs.get("keepdims", 1))
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and not is_empty(node.inputs[1]):
        v = ctx.const(node.inputs[1])
        if v is None:
            return f"the axes of {nname(node)} are not a constant"
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return f"{nname(node)} reduces nothing (noop_with_empty_axes=1, no axes)"
        axes = list(range(rank))
    if any(not -rank <= a < rank for a in axes):
        return f"axes {axes} of {nname(node)} out of range for rank {rank}"
    return tuple(sorted({a % rank for a in axes})), keepdims


def per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``value`` as C float64 numbers if it broadcasts against an (N, C, *spatial) tensor of
    ``rank`` as one number per channel (shape (C, 1, ..., 1), (1, C, 1, ...), a single value),
    else None (e.g. a (1, 1, H, W) or full-size tensor)."""
    v = np.asarray(value)
    if v.ndim > rank:
        return None
    shp = (1,) * (rank - v.ndim) + tuple(v.shape)
    if any(d != 1 for i, d in enumerate(shp) if i != 1) or shp[1] not in (1, channels):
        return None
    return np.broadcast_to(v.astype(np.float64).reshape(-1), (channels,)).copy()


def scalar_const(ctx: Context, t: gs.Tensor) -> float | None:
    """A one-element constant, also through ``Abs`` / ``Identity`` / ``Cast`` of one (FRN's
    ``eps.abs()``: legacy export keeps the Abs node)."""
    v = ctx.scalar(t)
    if v is not None:
        return v
    p = ctx.producer(t)
    if is_op(p, "Abs", "Identity", "Cast") and p.inputs:
        inner = scalar_const(ctx, p.inputs[0])
        if inner is not None:
            return abs(inner) if p.op == "Abs" else inner
    return None


def const_through(ctx: Context, t: gs.Tensor) -> np.ndarray | None:
    """A constant, also through Identity / Abs / Cast-to-float of one (the exporters sometimes
    leave these on parameters)."""
    v = ctx.const(t)
    if v is not None:
        return v
    p = ctx.producer(t)
    if is_op(p, "Identity", "Abs") and p.inputs:
        inner = const_through(ctx, p.inputs[0])
        if inner is not None:
            return np.abs(inner) if p.op == "Abs" else inner
    return None


def inverse_sqrt_use(ctx: Context, sqrt: gs.Node) -> tuple[gs.Node, gs.Tensor, list[gs.Node]] | str:
    """The node that multiplies some tensor ``t`` by ``1 / sqrt``, in the forms the exporters
    write: ``Div(t, sqrt)``, ``Mul(t, Reciprocal(sqrt))``, ``Mul(t, Div(1, sqrt))``. Returns
    (that node, t, the nodes between: [] or [Reciprocal / Div]) or a reason."""
    s = sqrt.outputs[0]
    user, why = only_consumer(ctx, s)
    if user is None:
        return why
    if is_op(user, "Div") and user.inputs[1] is s and user.inputs[0] is not s:
        if ctx.scalar(user.inputs[0]) != 1.0:
            return user, user.inputs[0], []                     # t / sqrt
    elif not is_op(user, "Reciprocal"):
        return f"{nname(sqrt)}'s output feeds {user.op} {nname(user)}, not a division by it or a Reciprocal"
    inv = user
    mul, why = only_consumer(ctx, inv.outputs[0])
    if mul is None:
        return why
    if not is_op(mul, "Mul"):
        return f"1 / sqrt ({nname(inv)}) feeds {mul.op} {nname(mul)}, not a Mul"
    t = other(mul, inv.outputs[0])
    if t is None:
        return f"{nname(mul)} squares 1 / sqrt instead of scaling a tensor by it"
    return mul, t, [inv]


def const_tail(ctx: Context, y: gs.Tensor, rank: int, c: int, what: str, ops: tuple[str, ...]
               ) -> tuple[list[gs.Node], dict[str, np.ndarray]] | NoMatch:
    """Optional elementwise nodes after the normalized tensor ``y``, in the order ``ops`` (e.g.
    Mul, Add: the affine; Max: FRN's TLU), each with a per-channel constant operand. A node
    of one of these types whose constant is not per channel refuses the whole match (the graph
    stays as it is: no half-fused affine); one with a computed operand ends the pattern.
    Returns (the nodes, {op: C float64 values})."""
    nodes: list[gs.Node] = []
    found: dict[str, np.ndarray] = {}
    for op in ops:
        if ctx.is_graph_output(y) or len(ctx.consumers(y)) != 1:
            break
        user = ctx.consumers(y)[0]
        if not is_op(user, op):
            continue
        o = other(user, y)
        if o is None:
            break
        v = const_through(ctx, o)
        if v is None:
            break
        pc = per_channel(v, rank, c)
        if pc is None:
            return NoMatch(f"{op} {nname(user)} after the {what} is by a constant of shape "
                           f"{tuple(np.shape(v))}: not a per-channel {'affine' if op != 'Max' else 'threshold'} "
                           f"(expected C={c} values as (C, 1, ...), (1, C, 1, ...) or one value)")
        found[op] = pc
        nodes.append(user)
        y = user.outputs[0]
    return nodes, found


def emit(ctx: Context, m: Match, op_type: str, inputs: list, attrs: dict, name: str | None = None
         ) -> list[gs.Node]:
    """One ``normexport::<op_type>`` node named ``<anchor name>/<op_type>`` (or ``name``) that
    takes over the output tensor of the last matched node."""
    out = m.nodes[-1].outputs[0]
    anchor = m.anchor
    want = name or f"{anchor.name or anchor.op}/{op_type}"
    name = want if name or want not in ctx._names else ctx.fresh(want)
    ctx._names.add(name)
    m.nodes[-1].outputs.clear()          # hand the output tensor over to the new node
    node = ctx.node(op_type, inputs, [out], name=name, domain=DOMAIN, attrs=attrs, origin=m.nodes[-1])
    return [node]


def channel_const(ctx: Context, hint: str, values: np.ndarray, dtype) -> gs.Constant:
    return ctx.constant(hint, np.asarray(values, dtype=dtype).reshape(-1))


def float_dtype(ctx: Context, t: gs.Tensor) -> np.dtype | str:
    """The element type of ``t`` when it is float16/float32/float64, else a reason."""
    dt = ctx.dtype(t)
    if dt is None:
        return f"element type of '{tname(t)}' is unknown"
    if dt not in (np.float16, np.float32, np.float64):
        return f"'{tname(t)}' is {dt}, not a floating tensor"
    return dt



_CAST = {1: np.float32, 10: np.float16, 11: np.float64, 6: np.int32, 7: np.int64}


def static_eval(ctx: Context, t: gs.Tensor, visited: list[gs.Node], depth: int = 0, *,
                symbolic: bool = False, shapes: dict | None = None) -> np.ndarray | None:
    """The value of ``t`` if it follows from constants and static shapes alone (the legacy
    exporter computes e.g. a spatial size as Cast(ReduceProd(Gather(Shape(v), 2)))); the nodes
    evaluated are appended to ``visited``. None when it does not. ``symbolic``: shapes may hold
    symbolic dims (strings, in object arrays), for shape arithmetic that only moves dims around
    (Gather / Concat / Unsqueeze / Equal / Where: e.g. an Expand target built from Shape(x)).
    ``shapes``: tensor name -> shape known to the caller (e.g. an (N, C, S) view whose S shape
    inference could not derive)."""
    v = ctx.const(t)
    if v is not None:
        return np.asarray(v)
    p = ctx.producer(t)
    if p is None or depth > 12 or p.domain not in _DEFAULT:
        return None
    if p.op == "Shape":
        s = (shapes or {}).get(p.inputs[0].name) or static_shape(ctx, p.inputs[0])
        if s is None or None in s or (not symbolic and any(not isinstance(d, int) for d in s) and not shapes):
            return None
        start, end = int(p.attrs.get("start", 0)), p.attrs.get("end")
        visited.append(p)
        arr = np.array(s, dtype=np.int64 if all(isinstance(d, int) for d in s) else object)
        return arr[start:None if end is None else int(end)]
    vals = []
    for i in p.inputs:
        if is_empty(i):
            vals.append(None)
            continue
        val = static_eval(ctx, i, visited, depth + 1, symbolic=symbolic, shapes=shapes)
        if val is None:
            return None
        vals.append(val)
    a = vals[0] if vals else None
    numeric = ("Cast", "ReduceProd", "Add", "Sub", "Mul", "Div", "ConstantOfShape")
    if p.op in numeric and any(isinstance(v, np.ndarray) and v.dtype == object
                               and any(isinstance(e, str) for e in v.reshape(-1)) for v in vals):
        return None          # arithmetic on a symbolic dim: not static
    try:
        if p.op in ("Identity",):
            out = a
        elif p.op == "Cast":
            out = a.astype(_CAST[int(p.attrs["to"])])
        elif p.op == "Gather":
            out = np.take(a, vals[1], axis=int(p.attrs.get("axis", 0)))
        elif p.op == "ReduceProd":
            axes = p.attrs.get("axes")
            if axes is None and len(vals) > 1 and vals[1] is not None:
                axes = [int(x) for x in vals[1].reshape(-1)]
            out = np.prod(a, axis=None if not axes else tuple(axes), keepdims=bool(p.attrs.get("keepdims", 1)))
            out = np.asarray(out, dtype=a.dtype)
        elif p.op in ("Add", "Sub", "Mul"):
            out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[p.op](a, vals[1])
        elif p.op == "Div":
            out = (a // vals[1]) if np.issubdtype(a.dtype, np.integer) else a / vals[1]
        elif p.op == "Reshape":
            out = np.reshape(a, [int(d) for d in vals[1].reshape(-1)])
        elif p.op == "Equal":
            out = np.array([x == y for x, y in zip(*np.broadcast_arrays(a, vals[1]))], dtype=bool).reshape(
                np.broadcast_shapes(a.shape, vals[1].shape))
        elif p.op == "Where":
            out = np.where(a, vals[1], vals[2])
        elif p.op == "ConstantOfShape":
            fill = p.attrs.get("value")
            fill = np.asarray(fill.values if isinstance(fill, gs.Constant) else (fill if fill is not None else np.zeros(1, np.float32)))
            out = np.full([int(d) for d in a.reshape(-1)], fill.reshape(-1)[0], dtype=fill.dtype)
        elif p.op == "Concat":
            out = np.concatenate([np.atleast_1d(x) for x in vals], axis=int(p.attrs.get("axis", 0)))
        elif p.op == "Unsqueeze":
            axes = p.attrs.get("axes", None if len(vals) < 2 else list(vals[1].reshape(-1)))
            out = np.expand_dims(a, tuple(int(x) for x in axes))
        elif p.op == "Squeeze":
            axes = p.attrs.get("axes", None if len(vals) < 2 or vals[1] is None else list(vals[1].reshape(-1)))
            out = np.squeeze(a, None if axes is None else tuple(int(x) for x in axes))
        else:
            return None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError):
        return None
    visited.append(p)
    if any(isinstance(v, np.ndarray) and v.dtype == object for v in vals) and np.asarray(out).dtype != bool:
        res = np.empty(np.shape(out), dtype=object)   # keep ints and symbols apart
        res[...] = out
        return res
    return np.asarray(out)


def graph_order(ctx: Context, nodes: Iterable[gs.Node]) -> list[gs.Node]:
    pos = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
    uniq = {id(n): n for n in nodes}
    return sorted(uniq.values(), key=lambda n: pos.get(id(n), -1))


def private_set(ctx: Context, nodes: Iterable[gs.Node], final: gs.Node) -> str | None:
    """None if every output of every node in ``nodes`` except ``final`` is read only by nodes in
    ``nodes`` and is not a graph output (the matched nodes can be removed as a whole)."""
    ids = {id(n) for n in nodes}
    for n in nodes:
        if n is final:
            continue
        for o in n.outputs:
            if (why := private_to(ctx, o, [m for m in o.outputs if id(m) in ids])):
                return why
    return None
