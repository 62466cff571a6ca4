"""Fuse SPADE's normalize + modulate, written as standard ONNX, into one ``normexport::SPADE``
node (the resize and the convs that compute the modulation maps stay as they are).

Target (``normexport/ops/spade.py``): ``Y = X_hat * (1 + gamma_map) + beta_map`` with X_hat the
parameter-free norm of X: mode 0 "batch" (running statistics: ``(X - rm) / sqrt(rv + eps)``),
mode 1 "instance" (per-sample statistics over the spatial dims, biased variance); gamma_map
and beta_map have X's shape.

Pattern ``fuse-spade`` (NVlabs/SPADE ``normalized * (1 + gamma) + beta`` with
``param_free_norm`` = ``BatchNorm2d(affine=False)`` in eval or ``InstanceNorm2d(affine=False)``,
as both torch exporters write it; model opset >= MIN_OPSET = 15, the lowest the function bodies
are written for)::

    H  = InstanceNormalization(X, ones(C), zeros(C), epsilon)                      # mode 1
       | BatchNormalization(X, ones(C), zeros(C), mean, var, epsilon), inference  # mode 0
       | Mul(Sub(X, mean), k) | Div(Sub(X, mean), 1 / k)     # BN eval as torch decomposes it
    Y  = Add(Mul(H, Add(gamma_map, 1)), beta_map)      # operands in either order (anchor: the Mul)

The decomposed BN form (``custom_ops=False`` exports, torch's batch_norm decomposition with
``rsqrt(var + eps)`` folded into the constant k, per channel, all > 0) becomes mode 0 with
``running_var = 1 / k^2`` and ``epsilon = 0``: ``(X - mean) / sqrt(1 / k^2) = (X - mean) * k``
exactly (in real arithmetic; the float32 rounding of 1 / k^2 is one ulp). A norm whose output
also feeds other nodes (e.g. one normalized tensor modulated by two SPADE blocks) stays for
them; the fused node recomputes it from X.

The scale / bias of the norm must be exactly ones / zeros (the param-free norm; a norm with an
affine is not SPADE's), the running statistics constants, the ``1`` a scalar constant 1, and
gamma_map / beta_map must have X's shape (the contract reshapes them to it, it does not
broadcast); anything else is a NoMatch with the reason. The math is then the contract's
term for term (the same ``epsilon``), no conversion. A map whose batch dim shape inference
leaves unknown (the legacy exporter with a dynamic batch computes the Resize sizes at run
time) is accepted when all other dims match: the node reshapes the maps to X's shape and fails
at run time on a batch mismatch instead of broadcasting.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from ._fuse_common import (
    channel_const,
    emit,
    float_dtype,
    is_op,
    nname,
    only_consumer,
    opset_reason,
    other,
    per_channel,
    static_shape,
    tname,
)
from .base import Context, Match, NoMatch, Rule

OP = "SPADE"


class FuseSPADE(Rule):
    name = "fuse-spade"
    summary = ("param-free InstanceNormalization / BatchNormalization (or its eval form (x - mean) * k) "
               "then x * (1 + gamma) + beta -> normexport::SPADE")
    anchors = ("Mul",)

    def match(self, ctx: Context, mul: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        h = gamma = add1 = None
        for t in mul.inputs:
            a = ctx.producer(other(mul, t)) if other(mul, t) is not None else None
            if not is_op(a, "Add"):
                continue
            for u, v in ((a.inputs[0], a.inputs[1]), (a.inputs[1], a.inputs[0])):
                if ctx.scalar(v) == 1.0 and ctx.const(u) is None:
                    h, gamma, add1 = t, u, a
        if h is None:
            return NoMatch(f"{nname(mul)} does not multiply by (1 + gamma) (an Add of a computed map and 1)")
        norm = self._norm(ctx, h)
        if isinstance(norm, str):
            return NoMatch(norm)
        x, rm, rv, eps, mode, chain = norm
        shp = static_shape(ctx, x)
        if shp is None or len(shp) < 3:
            return NoMatch(f"'{tname(x)}' has unknown rank or rank < 3")
        dt = float_dtype(ctx, x)
        if isinstance(dt, str):
            return NoMatch(dt)
        out, why = only_consumer(ctx, mul.outputs[0])
        if out is None:
            return NoMatch(why)
        if not is_op(out, "Add"):
            return NoMatch(f"the modulated tensor feeds {out.op} {nname(out)}, not an Add of beta")
        beta = other(out, mul.outputs[0])
        if beta is None or ctx.const(beta) is not None:
            return NoMatch(f"{nname(out)} adds a constant, not a beta map")
        for what, t in (("gamma", gamma), ("beta", beta)):
            ts = static_shape(ctx, t)
            if not _same_shape(ts, shp):
                return NoMatch(f"the {what} map '{tname(t)}' has shape {ts}, not the shape {shp} of "
                               f"'{tname(x)}' (the op takes full-size maps, no broadcasting)")
            if ctx.dtype(t) != dt:
                return NoMatch(f"the {what} map '{tname(t)}' is {ctx.dtype(t)}, X is {dt}")
        # the norm (and 1 + gamma) go with the match when nothing else reads them; a norm shared
        # with another consumer (two SPADE modulations of one normalized tensor) stays for it
        nodes = []
        if not ctx.private(h, mul):
            nodes += chain
            if any(ctx.private(n.outputs[0], nxt) for n, nxt in itertools.pairwise(chain)):
                nodes = []
        if not ctx.private(add1.outputs[0], mul):
            nodes.append(add1)
        return Match(nodes + [mul, out], anchor=chain[-1], x=x, gamma=gamma, beta=beta, rm=rm, rv=rv,
                     eps=eps, mode=mode, dtype=dt)

    def _norm(self, ctx: Context, h: gs.Tensor):
        """(x, running mean, running var, epsilon, mode, [nodes]) of the parameter-free norm
        producing ``h``, or a reason."""
        node = ctx.producer(h)
        if is_op(node, "InstanceNormalization", "BatchNormalization"):
            x = node.inputs[0]
            shp = static_shape(ctx, x)
            if shp is None or len(shp) < 3 or not isinstance(shp[1], int):
                return f"'{tname(x)}' has unknown rank, rank < 3 or no static channel count"
            c = shp[1]
            bn = node.op == "BatchNormalization"
            if bn and (int(node.attrs.get("training_mode", 0)) or len([o for o in node.outputs if o.name]) != 1):
                return f"{nname(node)} is in training mode (batch statistics), not the eval form"
            for i, want, what in ((1, 1.0, "scale"), (2, 0.0, "bias")):
                v = ctx.const(node.inputs[i])
                if v is None:
                    return f"the {what} of {nname(node)} is not a constant"
                if not np.all(np.asarray(v) == want):
                    return f"{nname(node)} has an affine ({what} not all {want:g}): SPADE's parameter-free norm has none"
            if bn:
                stats = [ctx.const(node.inputs[i]) for i in (3, 4)]
                if any(st is None for st in stats):
                    return f"the running statistics of {nname(node)} are not constants"
                rm, rv = (np.asarray(st, dtype=np.float64).reshape(-1) for st in stats)
            else:
                rm, rv = np.zeros(c), np.ones(c)
            return x, rm, rv, float(node.attrs.get("epsilon", 1e-5)), 0 if bn else 1, [node]
        # BN's eval form as torch decomposes it: (x - mean) * k with k = rsqrt(var + eps)
        # folded into a constant (or / s). SPADE mode 0 with running_var = 1 / k^2 and epsilon 0
        # computes (x - mean) / sqrt(1 / k^2) = (x - mean) * k exactly (k > 0).
        if is_op(node, "Mul", "Div"):
            for t in (node.inputs if node.op == "Mul" else node.inputs[:1]):
                sub = ctx.producer(t)
                kt = other(node, t)
                if not is_op(sub, "Sub") or kt is None:
                    continue
                x, mt = sub.inputs
                shp = static_shape(ctx, x)
                if shp is None or len(shp) < 3 or not isinstance(shp[1], int):
                    return f"'{tname(x)}' has unknown rank, rank < 3 or no static channel count"
                kv, mv = ctx.const(kt), ctx.const(mt)
                if kv is None or mv is None or ctx.const(x) is not None:
                    return f"{nname(node)} / {nname(sub)}: the mean and scale of (x - mean) * k are not constants"
                k, m = per_channel(kv, len(shp), shp[1]), per_channel(mv, len(shp), shp[1])
                if k is None or m is None:
                    return (f"{nname(sub)} / {nname(node)}: mean {tuple(np.shape(mv))} and scale "
                            f"{tuple(np.shape(kv))} are not per channel")
                if node.op == "Div":
                    k = 1.0 / k
                if not np.all(np.isfinite(k)) or not np.all(k > 0):
                    return f"{nname(node)} scales by a non-positive value: not 1 / sqrt(var + eps)"
                return x, m, 1.0 / (k * k), 0.0, 0, [sub, node]
        what = f"{node.op} {nname(node)}" if node is not None else f"'{tname(h)}'"
        return (f"the modulated tensor comes from {what}, not a parameter-free norm "
                f"(InstanceNormalization, BatchNormalization or (x - mean) * k)")

    def rewrite(self, ctx: Context, m: Match):
        ins = [m.x, m.gamma, m.beta, channel_const(ctx, "spade_running_mean", m.rm, m.dtype),
               channel_const(ctx, "spade_running_var", m.rv, m.dtype)]
        return emit(ctx, m, OP, ins, {"epsilon": float(m.eps), "mode": int(m.mode)})


def _same_shape(map_shape, x_shape) -> bool:
    """The map's shape is X's: equal static dims and symbols; the batch dim may be one that
    shape inference left unknown (the legacy exporter's Resize sizes are computed at run time)."""
    if map_shape is None or len(map_shape) != len(x_shape):
        return False
    for i, (m, x) in enumerate(zip(map_shape, x_shape)):
        if m is not None and m == x:
            continue
        if i == 0 and not isinstance(m, int) and not isinstance(x, int) and (m is None or m.startswith("unk__")):
            continue
        return False
    return True


def _private(ctx: Context, t: gs.Tensor, user: gs.Node) -> str | None:
    return ctx.private(t, user)


RULES = (FuseSPADE(),)
