"""Fuse Filter Response Normalization (+ TLU) written as standard ONNX into one
``normexport::FilterResponseNorm`` node.

Target (``normexport/ops/frn.py``): ``Y = max(gamma * X / sqrt(mean_spatial(X^2) + eps) + beta,
tau)`` (the max only with ``tlu=1``), gamma / beta / tau C values, ``eps`` the effective
epsilon.

Pattern ``fuse-frn`` (the paper's code, ``nu2 = x.pow(2).mean(dim=[2, 3], keepdim=True);
x = x * torch.rsqrt(nu2 + eps.abs()); max(gamma * x + beta, tau)``, as both torch exporters
write it; X of shape (N, C, *spatial), rank >= 3, C static, model opset >= MIN_OPSET = 15, the
lowest the function bodies are written for)::

    NU2 = ReduceMean(Pow(X, 2) | Mul(X, X), axes = all spatial axes, keepdims=1)
    Q   = Sqrt(Add(NU2, eps))          # eps: a scalar constant, also Abs(constant) (legacy
                                       # export keeps eps.abs() as an Abs node; the dynamo
                                       # path folds it into an initializer)
    H   = Mul(X, Reciprocal(Q)) | Mul(X, Div(1, Q)) | Div(X, Q)
    Y   = Max(Add(Mul(H, gamma), beta), tau)   # each optional, per-channel constants

Math: ``x * rsqrt(nu2 + |eps|)`` = ``x / sqrt(nu2 + eps')`` with ``eps' = |eps|`` (the contract's
effective epsilon), so the attribute is ``eps = |eps|`` exactly; a missing Mul / Add / Max is
gamma = 1, beta = 0, tlu = 0. Not fused (NoMatch with the reason): eps not a scalar constant
(e.g. per channel), axes other than all spatial ones, the square or the statistics shared with
other nodes, a Mul / Add / Max by a constant that is not per channel, rank < 3, opset < MIN_OPSET.
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
    opset_reason,
    private_to,
    reduce_axes,
    scalar_const,
    static_shape,
    tname,
)
from .base import Context, Match, NoMatch, Rule

OP = "FilterResponseNorm"


class FuseFRN(Rule):
    name = "fuse-frn"
    summary = ("x * rsqrt(ReduceMean(x^2, spatial) + |eps|) [* gamma + beta] [max tau] "
               "-> normexport::FilterResponseNorm")
    anchors = ("Sqrt",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        add = ctx.producer(node.inputs[0])
        if not is_op(add, "Add"):
            return NoMatch(f"the input of {nname(node)} is not an Add of mean(x^2) and epsilon")
        nu2 = eps = None
        for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            if ctx.const(a) is None and scalar_const(ctx, b) is not None:
                nu2, eps = a, scalar_const(ctx, b)
        if nu2 is None:
            return NoMatch(f"{nname(add)} does not add a scalar constant epsilon")
        rm = ctx.producer(nu2)
        if not is_op(rm, "ReduceMean"):
            return NoMatch(f"{nname(add)} adds epsilon to '{tname(nu2)}', not to a ReduceMean")
        sq = ctx.producer(rm.inputs[0])
        x = None
        if is_op(sq, "Pow") and ctx.scalar(sq.inputs[1]) == 2.0 or is_op(sq, "Mul") and sq.inputs[0] is sq.inputs[1]:
            x = sq.inputs[0]
        if x is None:
            return NoMatch(f"{nname(rm)} does not average a square (Pow(x, 2) or Mul(x, x))")
        if is_op(ctx.producer(x), "Sub"):
            # (x - mean)^2: a variance, this is not FRN (GroupNorm / AdaIN rules)
            return NoMatch(f"the squared tensor '{tname(x)}' is centred (a Sub): a variance, not FRN's mean square")
        shp = static_shape(ctx, x)
        if shp is None or len(shp) < 3:
            return NoMatch(f"'{tname(x)}' has unknown rank or rank < 3 (FRN needs (N, C, *spatial))")
        rank, c = len(shp), shp[1]
        if not isinstance(c, int):
            return NoMatch(f"channel count of '{tname(x)}' is not static (shape {shp})")
        ax = reduce_axes(ctx, rm)
        if isinstance(ax, str):
            return NoMatch(ax)
        if ax[0] != tuple(range(2, rank)):
            return NoMatch(f"{nname(rm)} averages over axes {list(ax[0])}, not all spatial axes "
                           f"{list(range(2, rank))} of '{tname(x)}'")
        if ax[1] != 1:
            return NoMatch(f"{nname(rm)} does not keep the reduced dims")
        for t, users in ((sq.outputs[0], [rm]), (nu2, [add]), (add.outputs[0], [node])):
            if (why := private_to(ctx, t, users)):
                return NoMatch(why)
        use = inverse_sqrt_use(ctx, node)
        if isinstance(use, str):
            return NoMatch(use)
        norm, num, inv = use
        if num is not x:
            return NoMatch(f"{nname(norm)} scales '{tname(num)}', not the squared input '{tname(x)}'")
        dt = float_dtype(ctx, x)
        if isinstance(dt, str):
            return NoMatch(dt)
        tail = const_tail(ctx, norm.outputs[0], rank, c, "filter response normalization", ("Mul", "Add", "Max"))
        if isinstance(tail, NoMatch):
            return tail
        nodes, found = tail
        core = [sq, rm, add, node, *inv, norm]
        return Match(core + nodes, anchor=node, x=x, eps=abs(eps), dtype=dt,
                     gamma=found.get("Mul", np.ones(c)), beta=found.get("Add", np.zeros(c)),
                     tau=found.get("Max", np.zeros(c)), tlu=int("Max" in found))

    def rewrite(self, ctx: Context, m: Match):
        ins = [m.x] + [channel_const(ctx, f"frn_{k}", getattr(m, k), m.dtype) for k in ("gamma", "beta", "tau")]
        return emit(ctx, m, OP, ins, {"eps": float(m.eps), "tlu": m.tlu})


RULES = (FuseFRN(),)
