"""Fuse Group Normalization written as standard ONNX into one ``normexport::GroupNorm`` node.

Target (``normexport/ops/groupnorm.py``): per sample n and group g of C/G consecutive channels,
``Y[n, c] = scale[c] * (X[n, c] - mu) / sqrt(var + epsilon) + bias[c]`` with mu / var the mean
and biased variance of ``X[n, group g, ...]``; ``activation`` 0, or 1 / 2 when a ReLU / SiLU
follows (below).

Patterns (X of shape (N, C, *spatial), C static, model opset >= MIN_OPSET = 15, the lowest the
function bodies are written for; below 18 ReduceMean takes its axes as an attribute):

``fuse-groupnorm-instancenorm`` (both torch exporters write ``nn.GroupNorm`` this way)::

    R  = Reshape(X, [0 or N, G, -1])        # also [0|N, G, d2, ...] with prod(d) = C/G * S
    I  = InstanceNormalization(R, s, b, epsilon)   # s, b: G constants (torch: ones / zeros)
    Y0 = Reshape(I, Shape(X) or X's static shape)
    Y  = Add(Mul(Y0, w), b')                # optional; w, b' per-channel constants
                                            # ((C, 1, ..., 1), (1, C, 1, ...) or one value)

  InstanceNormalization of R normalises each (n, g) row over all of its C/G * S values with
  the biased variance: exactly GroupNorm's statistics. Its per-group affine and the
  per-channel one compose exactly into one per-channel affine:
  ``scale[c] = w[c] * s[g(c)]``, ``bias[c] = w[c] * b[g(c)] + b'[c]`` (g(c) = c // (C/G),
  computed in float64, rounded once to X's type).

``fuse-groupnorm-reducemean`` (the hand-written / expanded form)::

    R  = Reshape(X, [0 or N, G, -1])
    M  = ReduceMean(R, axes=[2..], keepdims=1);  D = Sub(R, M)
    V  = ReduceMean(Pow(D, 2) or Mul(D, D), axes=[2..], keepdims=1)
    Q  = Sqrt(Add(V, eps))                 # eps inside the square root, a scalar constant
    H  = Div(D, Q) | Mul(D, Reciprocal(Q)) | Mul(D, Div(1, Q))
    Y  = Add(Mul(Reshape(H, shape of X), w), b')   # affine optional, as above

``fuse-groupnorm-onnx``: ``GroupNormalization`` nodes. Opset 18-20 (GroupNormalization-18):
scale / bias are per group (G values): converted exactly by repeating each group's value C/G
times (constants required: a per-group graph input would need a runtime repeat). Opset >= 21
(GroupNormalization-21): per channel, passed through as they are (constants or tensors of C
elements). ``stash_type`` must be 1 (float32 statistics; the normexport kernels accumulate in
float, the function body in float64).

Every form also takes a following activation into the node's ``activation`` attribute when
the normalized (and affine) tensor feeds only it: ``Relu`` -> 1, SiLU written as
``Mul(y, Sigmoid(y))`` (how both torch exporters write ``nn.SiLU``) -> 2 (the contract's
``act(scale * x_hat + bias)``, exactly).

Not fused (NoMatch with the reason): a Reshape whose group count does not divide C (it groups
across channel boundaries), a target other than (N, G, rest), reduce axes other than the group
axes, eps outside the square root, a Mul / Add after the pattern by a constant that is not per
channel (the graph is left as it is rather than half-fused), shared intermediates, non-constant
statistics parameters, unknown channel count, model opset < MIN_OPSET (15).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ._fuse_common import (
    channel_const,
    const_tail,
    emit,
    float_dtype,
    inverse_sqrt_use,
    is_op,
    nname,
    only_consumer,
    opset_reason,
    other,
    private_to,
    reduce_axes,
    static_shape,
    tname,
)
from .base import Context, Match, NoMatch, Rule

OP = "GroupNorm"


def group_reshape(ctx: Context, r1: gs.Node) -> tuple[gs.Tensor, int, int, int] | str:
    """``r1`` = Reshape(X, [0|N, G, rest]) grouping C/G consecutive channels: (X, C, G, rank of
    X) or a reason."""
    x = r1.inputs[0]
    shp = static_shape(ctx, x)
    if shp is None:
        return f"rank of '{tname(x)}' (input of {nname(r1)}) is unknown"
    if len(shp) < 2:
        return f"'{tname(x)}' has rank {len(shp)}, GroupNorm needs (N, C, ...)"
    c = shp[1]
    if not isinstance(c, int):
        return f"channel count of '{tname(x)}' is not static (shape {shp})"
    tgt = ctx.const(r1.inputs[1])
    if tgt is None:
        return f"the target shape of {nname(r1)} is not a constant"
    tgt = [int(v) for v in np.asarray(tgt).reshape(-1)]
    allowzero = int(r1.attrs.get("allowzero", 0))
    if len(tgt) < 3:
        return f"{nname(r1)} reshapes to {tgt}, not (N, G, -1)"
    if not ((tgt[0] == 0 and not allowzero) or (isinstance(shp[0], int) and tgt[0] == shp[0])):
        return f"{nname(r1)} reshapes to {tgt}: dim 0 is not the batch (0 or N)"
    g = tgt[1]
    if g <= 0:
        return f"{nname(r1)} reshapes to {tgt}: group count {g} is not positive"
    if c % g:
        return (f"{nname(r1)} reshapes {c} channels into {g} groups: {g} does not divide {c}, "
                f"the rows cross channel boundaries (not a GroupNorm)")
    rest = tgt[2:]
    if rest != [-1]:
        s = shp[2:]
        if any(not isinstance(d, int) for d in s):
            return f"{nname(r1)} reshapes to {tgt} and the spatial size of '{tname(x)}' is not static"
        if any(v <= 0 for v in rest) or int(np.prod(rest)) != (c // g) * int(np.prod(s, dtype=np.int64)):
            return f"{nname(r1)} reshapes to {tgt}: the trailing dims are not the C/G * spatial values of a group"
    return x, c, g, len(shp)


def reshape_back(ctx: Context, r2: gs.Node, x: gs.Tensor) -> str | None:
    """None if Reshape ``r2`` restores the shape of ``x``."""
    if not is_op(r2, "Reshape"):
        return f"the normalized groups feed {r2.op} {nname(r2)}, not a Reshape back to the shape of '{tname(x)}'"
    tgt = r2.inputs[1]
    p = ctx.producer(tgt)
    if is_op(p, "Shape") and p.inputs[0] is x and int(p.attrs.get("start", 0)) == 0 and "end" not in p.attrs:
        return None
    shp = static_shape(ctx, x)
    v = ctx.const(tgt)
    if v is not None and shp is not None:
        v = [int(a) for a in np.asarray(v).reshape(-1)]
        if len(v) == len(shp):
            ok = [d == e or (i == 0 and e == 0 and not int(r2.attrs.get("allowzero", 0)))
                  for i, (d, e) in enumerate(zip(shp, v))]
            bad = [i for i, k in enumerate(ok) if not k]
            if not bad or (len(bad) == 1 and v[bad[0]] == -1):
                return None
    out = static_shape(ctx, r2.outputs[0])
    if out is not None and shp is not None and all(isinstance(d, int) for d in shp) and out == shp:
        return None
    return f"{nname(r2)} does not reshape back to the shape of '{tname(x)}'"


def _finish(ctx: Context, anchor: gs.Node, core: list[gs.Node], y: gs.Tensor, x: gs.Tensor, c: int,
            g: int, rank: int, eps: float, gscale: np.ndarray, gbias: np.ndarray) -> Match | NoMatch:
    dt = float_dtype(ctx, x)
    if isinstance(dt, str):
        return NoMatch(dt)
    tail = const_tail(ctx, y, rank, c, "GroupNorm", ("Mul", "Add"))
    if isinstance(tail, NoMatch):
        return tail
    nodes, found = tail
    w, b = found.get("Mul"), found.get("Add")
    w = np.ones(c) if w is None else w
    b = np.zeros(c) if b is None else b
    scale = w * gscale
    bias = w * gbias + b
    act_nodes, act = activation_tail(ctx, (nodes[-1] if nodes else core[-1]).outputs[0])
    return Match(core + nodes + act_nodes, anchor=anchor, x=x, scale=scale, bias=bias, groups=g, eps=eps,
                 dtype=dt, activation=act)


def activation_tail(ctx: Context, y: gs.Tensor) -> tuple[list[gs.Node], int]:
    """A ReLU (activation 1) or SiLU ``Mul(y, Sigmoid(y))`` (activation 2) reading only ``y``:
    the contract's fused activation. Anything else: ([], 0)."""
    if ctx.is_graph_output(y):
        return [], 0
    users = ctx.consumers(y)
    if len(users) == 1 and is_op(users[0], "Relu"):
        return [users[0]], 1
    if len(users) == 2:
        sig = next((u for u in users if is_op(u, "Sigmoid")), None)
        mul = next((u for u in users if is_op(u, "Mul")), None)
        if (sig is not None and mul is not None and not ctx.is_graph_output(sig.outputs[0])
                and ctx.consumers(sig.outputs[0]) == [mul] and other(mul, y) is sig.outputs[0]):
            return [sig, mul], 2
    return [], 0


def _group_params(ctx: Context, node: gs.Node, g: int, c: int) -> tuple[np.ndarray, np.ndarray] | str:
    """InstanceNormalization's (G) scale / bias repeated to C channels."""
    out = []
    for i, what in ((1, "scale"), (2, "bias")):
        v = ctx.const(node.inputs[i])
        if v is None:
            return f"the {what} of {nname(node)} ('{tname(node.inputs[i])}') is not a constant"
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.size != g:
            return f"the {what} of {nname(node)} has {v.size} values, expected one per group ({g})"
        out.append(np.repeat(v, c // g))
    return out[0], out[1]


class FuseGroupNormInstanceNorm(Rule):
    name = "fuse-groupnorm-instancenorm"
    summary = ("Reshape(N, G, -1) -> InstanceNormalization -> Reshape back [-> Mul -> Add] "
               "(torch's nn.GroupNorm export) -> normexport::GroupNorm")
    anchors = ("InstanceNormalization",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        r1 = ctx.producer(node.inputs[0])
        if not is_op(r1, "Reshape"):
            return NoMatch(f"the input of {nname(node)} is not a Reshape to (N, G, -1): an instance "
                           f"norm, not a GroupNorm")
        gr = group_reshape(ctx, r1)
        if isinstance(gr, str):
            return NoMatch(gr)
        x, c, g, rank = gr
        if (why := private_to(ctx, r1.outputs[0], [node])):
            return NoMatch(why)
        params = _group_params(ctx, node, g, c)
        if isinstance(params, str):
            return NoMatch(params)
        r2, why = only_consumer(ctx, node.outputs[0])
        if r2 is None:
            return NoMatch(why)
        if (why := reshape_back(ctx, r2, x)):
            return NoMatch(why)
        eps = float(node.attrs.get("epsilon", 1e-5))
        return _finish(ctx, node, [r1, node, r2], r2.outputs[0], x, c, g, rank, eps, *params)

    def rewrite(self, ctx: Context, m: Match):
        return _emit_gn(ctx, m)


def _emit_gn(ctx: Context, m: Match):
    return emit(ctx, m, OP, [m.x, channel_const(ctx, "gn_scale", m.scale, m.dtype),
                            channel_const(ctx, "gn_bias", m.bias, m.dtype)],
                {"num_groups": int(m.groups), "epsilon": float(m.eps), "activation": int(m.activation)})


def match_moments(ctx: Context, sqrt: gs.Node):
    """``sqrt`` = Sqrt(Add(ReduceMean(Pow(D, 2) | Mul(D, D)), eps)) with D = Sub(T, ReduceMean(T))
    over the same axes, keepdims=1. Returns dict(t, d, axes, eps, nodes=[...in order], mean,
    sub, square, var, add) or a reason."""
    add = ctx.producer(sqrt.inputs[0])
    if not is_op(add, "Add"):
        return f"the input of {nname(sqrt)} is not an Add of the variance and epsilon"
    eps = var = None
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if ctx.scalar(b) is not None and ctx.const(a) is None:
            var, eps = a, ctx.scalar(b)
    if var is None:
        return f"{nname(add)} does not add a scalar constant epsilon"
    vnode = ctx.producer(var)
    if not is_op(vnode, "ReduceMean"):
        return f"{nname(add)} adds epsilon to {tname(var)}, not to a ReduceMean (variance)"
    sq = ctx.producer(vnode.inputs[0])
    d = None
    if is_op(sq, "Pow") and ctx.scalar(sq.inputs[1]) == 2.0 or is_op(sq, "Mul") and sq.inputs[0] is sq.inputs[1]:
        d = sq.inputs[0]
    if d is None:
        return f"{nname(vnode)} does not average a square (Pow(d, 2) or Mul(d, d))"
    sub = ctx.producer(d)
    if not is_op(sub, "Sub"):
        return f"the squared tensor '{tname(d)}' is not a Sub (x - mean)"
    t, mu = sub.inputs
    mnode = ctx.producer(mu)
    if not is_op(mnode, "ReduceMean") or mnode.inputs[0] is not t:
        return f"{nname(sub)} does not subtract the ReduceMean of its own first input"
    ax1, ax2 = reduce_axes(ctx, mnode), reduce_axes(ctx, vnode)
    for ax in (ax1, ax2):
        if isinstance(ax, str):
            return ax
    if ax1 != ax2:
        return f"mean over {ax1[0]} but variance over {ax2[0]}"
    if ax1[1] != 1 or ax2[1] != 1:
        return f"{nname(mnode)} / {nname(vnode)} do not keep the reduced dims"
    for tt, users in ((mu, [sub]), (sq.outputs[0], [vnode]), (var, [add]), (add.outputs[0], [sqrt])):
        if (why := private_to(ctx, tt, users)):
            return why
    return {"t": t, "d": d, "axes": ax1[0], "eps": eps, "mean": mnode, "sub": sub, "square": sq, "var": vnode, "add": add}


class FuseGroupNormReduceMean(Rule):
    name = "fuse-groupnorm-reducemean"
    summary = ("Reshape(N, G, -1) -> (x - mean) / sqrt(var + eps) by ReduceMean/Sub/Pow/Sqrt/Div "
               "-> Reshape back [-> Mul -> Add] -> normexport::GroupNorm")
    anchors = ("Sqrt",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        mm = match_moments(ctx, node)
        if isinstance(mm, str):
            return NoMatch(mm)
        r1 = ctx.producer(mm["t"])
        if not is_op(r1, "Reshape"):
            return NoMatch(f"the normalized tensor '{tname(mm['t'])}' is not a Reshape to (N, G, -1)")
        gr = group_reshape(ctx, r1)
        if isinstance(gr, str):
            return NoMatch(gr)
        x, c, g, rank = gr
        trank = ctx.rank(mm["t"])
        if trank is None or mm["axes"] != tuple(range(2, trank)):
            return NoMatch(f"the statistics reduce axes {list(mm['axes'])} of the grouped tensor, not "
                           f"the group axes {list(range(2, trank or 3))}")
        use = inverse_sqrt_use(ctx, node)
        if isinstance(use, str):
            return NoMatch(use)
        norm, num, inv = use
        if num is not mm["d"]:
            return NoMatch(f"{nname(norm)} scales '{tname(num)}', not the centred tensor '{tname(mm['d'])}'")
        if (why := private_to(ctx, mm["t"], [mm["mean"], mm["sub"]])):
            return NoMatch(why)
        if (why := private_to(ctx, mm["d"], [mm["square"], norm])):
            return NoMatch(why)
        r2, why = only_consumer(ctx, norm.outputs[0])
        if r2 is None:
            return NoMatch(why)
        if (why := reshape_back(ctx, r2, x)):
            return NoMatch(why)
        core = [r1, mm["mean"], mm["sub"], mm["square"], mm["var"], mm["add"], node, *inv, norm, r2]
        return _finish(ctx, node, core, r2.outputs[0], x, c, g, rank, mm["eps"], np.ones(c), np.zeros(c))

    def rewrite(self, ctx: Context, m: Match):
        return _emit_gn(ctx, m)


class FuseGroupNormalization(Rule):
    name = "fuse-groupnorm-onnx"
    summary = ("ONNX GroupNormalization-18 (per-group scale, repeated per channel) / -21 "
               "(per-channel) -> normexport::GroupNorm")
    anchors = ("GroupNormalization",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        x = node.inputs[0]
        shp = static_shape(ctx, x)
        if shp is None or len(shp) < 2:
            return NoMatch(f"rank of '{tname(x)}' is unknown or < 2")
        c = shp[1]
        if not isinstance(c, int):
            return NoMatch(f"channel count of '{tname(x)}' is not static (shape {shp})")
        if "num_groups" not in node.attrs:
            return NoMatch(f"{nname(node)} has no num_groups")
        g = int(node.attrs["num_groups"])
        if g <= 0 or c % g:
            return NoMatch(f"num_groups {g} does not divide the channel count {c}")
        if int(node.attrs.get("stash_type", 1)) != 1:
            return NoMatch(f"{nname(node)} has stash_type {node.attrs['stash_type']} (only 1, float32 "
                           f"statistics, is fused)")
        dt = float_dtype(ctx, x)
        if isinstance(dt, str):
            return NoMatch(dt)
        eps = float(node.attrs.get("epsilon", 1e-5))
        version = 21 if ctx.opset >= 21 else 18
        params = []
        for i, what in ((1, "scale"), (2, "bias")):
            t = node.inputs[i]
            v = ctx.const(t)
            if version == 18:
                if v is None:
                    return NoMatch(f"GroupNormalization-18's per-group {what} '{tname(t)}' is not a "
                                   f"constant: converting it to per-channel needs its values")
                v = np.asarray(v, dtype=np.float64).reshape(-1)
                if v.size != g:
                    return NoMatch(f"GroupNormalization-18's {what} has {v.size} values, expected "
                                   f"num_groups={g}")
                params.append((f"gn_{what}", np.repeat(v, c // g)))
            else:
                if v is not None:
                    v = np.asarray(v).reshape(-1)
                    if v.size != c:
                        return NoMatch(f"GroupNormalization-21's {what} has {v.size} values, expected C={c}")
                    params.append((f"gn_{what}", v))
                else:
                    ts = static_shape(ctx, t)
                    if ts != (c,):
                        return NoMatch(f"GroupNormalization-21's {what} '{tname(t)}' has shape {ts}, "
                                       f"expected ({c},)")
                    if ctx.dtype(t) != dt:
                        return NoMatch(f"{what} '{tname(t)}' is {ctx.dtype(t)}, X is {dt}")
                    params.append(t)
        act_nodes, act = activation_tail(ctx, node.outputs[0])
        return Match([node, *act_nodes], anchor=node, x=x, params=params, groups=g, eps=eps, version=version,
                     dtype=dt, activation=act)

    def rewrite(self, ctx: Context, m: Match):
        params = [channel_const(ctx, p[0], p[1], m.dtype) if isinstance(p, tuple) else p for p in m.params]
        return emit(ctx, m, OP, [m.x, *params],
                    {"num_groups": int(m.groups), "epsilon": float(m.eps), "activation": int(m.activation)})


RULES = (FuseGroupNormInstanceNorm(), FuseGroupNormReduceMean(), FuseGroupNormalization())
