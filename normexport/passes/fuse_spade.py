"""Fuse SPADE's normalize + modulate, written as standard ONNX, into one ``normexport::SPADE``
node (the resize and the convs that compute the modulation maps stay as they are).

Target (``normexport/ops/spade.py``): ``Y = X_hat * (1 + gamma_map) + beta_map`` with X_hat the
parameter-free norm of X: mode 0 "batch" (running statistics: ``(X - rm) / sqrt(rv + eps)``),
mode 1 "instance" (per-sample statistics over the spatial dims, biased variance); gamma_map
and beta_map have X's shape.

Pattern ``fuse-spade`` (NVlabs/SPADE ``normalized * (1 + gamma) + beta`` with
``param_free_norm`` = ``BatchNorm2d(affine=False)`` in eval or ``InstanceNorm2d(affine=False)``,
as both torch exporters write it; model opset >= 18)::

    H  = InstanceNormalization(X, ones(C), zeros(C), epsilon)                      # mode 1
       | BatchNormalization(X, ones(C), zeros(C), mean, var, epsilon), inference  # mode 0
    Y  = Add(Mul(H, Add(gamma_map, 1)), beta_map)      # operands in either order

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
    static_shape,
    tname,
)
from .base import Context, Match, NoMatch, Rule

OP = "SPADE"


class FuseSPADE(Rule):
    name = "fuse-spade"
    summary = ("param-free InstanceNormalization / BatchNormalization then x * (1 + gamma) + beta "
               "-> normexport::SPADE")
    anchors = ("InstanceNormalization", "BatchNormalization")

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        x = node.inputs[0]
        shp = static_shape(ctx, x)
        if shp is None or len(shp) < 3:
            return NoMatch(f"'{tname(x)}' has unknown rank or rank < 3")
        c = shp[1]
        if not isinstance(c, int):
            return NoMatch(f"channel count of '{tname(x)}' is not static (shape {shp})")
        dt = float_dtype(ctx, x)
        if isinstance(dt, str):
            return NoMatch(dt)
        bn = node.op == "BatchNormalization"
        if bn and (int(node.attrs.get("training_mode", 0)) or len([o for o in node.outputs if o.name]) != 1):
            return NoMatch(f"{nname(node)} is in training mode (batch statistics), not the eval form")
        for i, want, what in ((1, 1.0, "scale"), (2, 0.0, "bias")):
            v = ctx.const(node.inputs[i])
            if v is None:
                return NoMatch(f"the {what} of {nname(node)} is not a constant")
            if not np.all(np.asarray(v) == want):
                return NoMatch(f"{nname(node)} has an affine ({what} not all {want:g}): SPADE's "
                               f"parameter-free norm has none")
        if bn:
            stats = [ctx.const(node.inputs[i]) for i in (3, 4)]
            if any(s is None for s in stats):
                return NoMatch(f"the running statistics of {nname(node)} are not constants")
            rm, rv = (np.asarray(s, dtype=np.float64).reshape(-1) for s in stats)
        else:
            rm, rv = np.zeros(c), np.ones(c)
        mul, why = only_consumer(ctx, node.outputs[0])
        if mul is None:
            return NoMatch(why)
        if not is_op(mul, "Mul"):
            return NoMatch(f"the normalized tensor feeds {mul.op} {nname(mul)}, not a Mul by (1 + gamma)")
        g1 = other(mul, node.outputs[0])
        add1 = ctx.producer(g1) if g1 is not None else None
        if not is_op(add1, "Add"):
            return NoMatch(f"{nname(mul)} multiplies by '{tname(g1) if g1 is not None else '?'}', not by an Add (1 + gamma)")
        gamma = None
        for a, b in ((add1.inputs[0], add1.inputs[1]), (add1.inputs[1], add1.inputs[0])):
            if ctx.scalar(b) == 1.0 and ctx.const(a) is None:
                gamma = a
        if gamma is None:
            return NoMatch(f"{nname(add1)} is not gamma + 1 (a scalar constant 1 and a computed map)")
        if (why := _private(ctx, add1.outputs[0], mul)):
            return NoMatch(why)
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
        eps = float(node.attrs.get("epsilon", 1e-5))
        return Match([node, add1, mul, out], anchor=node, x=x, gamma=gamma, beta=beta, rm=rm, rv=rv,
                     eps=eps, mode=0 if bn else 1, dtype=dt)

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
