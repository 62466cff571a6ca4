"""Fuse Adaptive Instance Normalization written as standard ONNX into one
``normexport::AdaIN`` node.

Target (``normexport/ops/adain.py``): ``Y = sigma(s) * (c - mu(c)) / sigma(c) + mu(s)`` with
``sigma(t) = sqrt(biased var of t[n, ch] over the spatial dims + epsilon)``, alpha = 1.

Pattern ``fuse-adain`` (naoto0804/pytorch-AdaIN ``adaptive_instance_normalization`` /
``calc_mean_std`` as both torch exporters write it, and the biased-variance form; content c
and style s of shape (N, C, *spatial), same rank, N and C; model opset >= 18)::

    V(t)     = Reshape(t, (N, C, -1))      (or t itself, reducing all spatial axes)
    mu(t)    = ReduceMean(V(t), spatial)
    var_b(t) = ReduceMean(Mul(D, D) | Pow(D, 2)),  D = Sub(V(t), ReduceMean(V(t), keepdims=1))
    var(t)   = var_b(t)                                   (biased)
             | Div(Mul(var_b(t), S), S - 1)               (torch's unbiased var(): S = the
                                                            number of reduced values, from a
                                                            constant or static shapes)
    sd(t)    = Sqrt(Add(var(t), eps))
    Y = Add(Mul(Div(Sub(c, E(mu(c))), E(sd(c))), E(sd(s))), E(mu(s)))
      E(.) = Reshape to (N, C, 1, ...) then optionally Expand (view(N, C, 1, 1).expand(size))

Math of the unbiased form (naoto0804's ``var(dim=2)``): with S values per (n, ch),
``sqrt(var_b * S / (S - 1) + eps) = sqrt(S / (S - 1)) * sqrt(var_b + eps (S - 1) / S)``. When
content and style have the same S, the factor sqrt(S / (S - 1)) cancels in sd(s) / sd(c), so
the pattern equals normexport::AdaIN with ``epsilon = eps * (S - 1) / S`` exactly (in real
arithmetic; float rounding differs at the type's precision). With different S the factors do
not cancel (the result is scaled by sqrt(S_s (S_c - 1) / (S_c (S_s - 1)))), which the contract
cannot express: NoMatch with the reason, as for S = 1 (unbiased variance undefined), a
spatial size that is not static (needed for the conversion), different eps or corrections
for content and style, and anything shared with other nodes.

Pattern ``fuse-adain-alpha`` (naoto0804 ``test.py``: ``feat * alpha + content_f * (1 - alpha)``)
on the fused node: ``Add(Mul(AdaIN(c, s), alpha), Mul(c, 1 - alpha))`` with scalar constants
summing to 1 (to float32 rounding of ``1 - alpha``) and alpha in [0, 1] -> the node's ``alpha``
attribute (the contract's ``alpha * A + (1 - alpha) * content``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ._fuse_common import (
    emit,
    float_dtype,
    graph_order,
    is_op,
    nname,
    opset_reason,
    other,
    private_set,
    reduce_axes,
    same_dim,
    static_eval,
    static_shape,
    tname,
)
from .base import Context, Match, NoMatch, Rule

OP = "AdaIN"


def _strip(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]) -> gs.Tensor | str:
    """Walk back from a broadcast statistic through Expand / Reshape / Unsqueeze / Identity to
    the (N, C[, 1...]) statistic it carries; checks that it is one value per (n, channel)."""
    rank = len(ref)
    while is_op(ctx.producer(t), "Expand"):
        p = ctx.producer(t)
        target = static_eval(ctx, p.inputs[1], [], symbolic=True)
        if target is None:
            if static_shape(ctx, p.outputs[0]) != ref or None in ref:
                return f"the target of {nname(p)} is neither derivable nor the content's shape {ref}"
        elif len(target) > rank or any(not (v == 1 or v == r) for v, r in zip(target[::-1], ref[::-1])):
            return f"{nname(p)} expands to {list(target)}, beyond the content's shape {ref}"
        nodes.append(p)
        t = p.inputs[0]
    s = static_shape(ctx, t)
    if s is None or len(s) != rank or not same_dim(s[0], ref[0]) or not same_dim(s[1], ref[1]) or any(d != 1 for d in s[2:]):
        return f"'{tname(t)}' (shape {s}) is not one value per sample and channel, shaped (N, C, 1, ...)"
    while is_op(ctx.producer(t), "Reshape", "Unsqueeze", "Identity", "Squeeze"):
        p = ctx.producer(t)
        nodes.append(p)
        t = p.inputs[0]
    s = static_shape(ctx, t)
    if (s is None or len(s) < 2 or not same_dim(s[0], ref[0]) or not same_dim(s[1], ref[1])
            or any(d != 1 for d in s[2:])):
        return f"'{tname(t)}' (shape {s}) is not a per-sample, per-channel statistic"
    return t


def _view_source(ctx: Context, rm: gs.Node, nodes: list[gs.Node]) -> tuple[gs.Tensor, gs.Tensor, int] | str:
    """The tensor ``rm`` (a ReduceMean) reduces: (source t, the reduced tensor V, S)."""
    v = rm.inputs[0]
    ax = reduce_axes(ctx, rm)
    if isinstance(ax, str):
        return ax
    vs = static_shape(ctx, v)
    p = ctx.producer(v)
    if is_op(p, "Reshape"):
        src = p.inputs[0]
        ss = static_shape(ctx, src)
        if (ss is None or vs is None or len(vs) != 3 or len(ss) < 3 or not same_dim(vs[0], ss[0])
                or not same_dim(vs[1], ss[1])):
            return f"{nname(p)} does not flatten (N, C, *spatial) to (N, C, S)"
        if ax[0] != (2,):
            return f"{nname(rm)} reduces axes {list(ax[0])} of the (N, C, S) view, not [2]"
        nodes.append(p)
    else:
        src, ss = v, vs
        if ss is None or len(ss) < 3 or ax[0] != tuple(range(2, len(ss))):
            return f"{nname(rm)} does not reduce all spatial axes of '{tname(v)}'"
    sp = ss[2:]
    s = int(np.prod(sp)) if all(isinstance(d, int) for d in sp) else None
    return src, v, s


def _mean_stat(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]):
    u = _strip(ctx, t, ref, nodes)
    if isinstance(u, str):
        return u
    rm = ctx.producer(u)
    if not is_op(rm, "ReduceMean"):
        return f"'{tname(u)}' is not a ReduceMean (the mean)"
    nodes.append(rm)
    vs = _view_source(ctx, rm, nodes)
    if isinstance(vs, str):
        return vs
    return vs[0]


def _std_stat(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]):
    """(source, eps, correction 0/1, S) of sqrt(var + eps), or a reason."""
    u = _strip(ctx, t, ref, nodes)
    if isinstance(u, str):
        return u
    sq = ctx.producer(u)
    if not is_op(sq, "Sqrt"):
        return f"'{tname(u)}' is not a Sqrt (the standard deviation)"
    add = ctx.producer(sq.inputs[0])
    if not is_op(add, "Add"):
        return f"the input of {nname(sq)} is not an Add of the variance and epsilon (eps inside the square root)"
    var = eps = None
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if ctx.scalar(b) is not None and ctx.const(a) is None:
            var, eps = a, ctx.scalar(b)
    if var is None:
        return f"{nname(add)} does not add a scalar constant epsilon"
    nodes += [sq, add]
    vnode = ctx.producer(var)
    corr = None
    if is_op(vnode, "Div"):                      # Div(Mul(var_b, S), S - 1): torch's unbiased var
        mul = ctx.producer(vnode.inputs[0])
        if not is_op(mul, "Mul"):
            return f"{nname(vnode)} is not var_b * S / (S - 1)"
        corr = (vnode, mul)
        for a, b in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            if is_op(ctx.producer(a), "ReduceMean"):
                var = a
                break
        else:
            return f"{nname(mul)} does not scale a ReduceMean (the biased variance)"
        nodes += [vnode, mul]
        vnode = ctx.producer(var)
    if not is_op(vnode, "ReduceMean"):
        return f"'{tname(var)}' is not a ReduceMean of squared deviations (the variance)"
    sqr = ctx.producer(vnode.inputs[0])
    d = None
    if is_op(sqr, "Pow") and ctx.scalar(sqr.inputs[1]) == 2.0 or is_op(sqr, "Mul") and sqr.inputs[0] is sqr.inputs[1]:
        d = sqr.inputs[0]
    if d is None:
        return f"{nname(vnode)} does not average a square (Pow(d, 2) or Mul(d, d))"
    sub = ctx.producer(d)
    if not is_op(sub, "Sub"):
        return f"the squared tensor '{tname(d)}' is not a Sub (x - mean)"
    v, mu = sub.inputs
    mnode = ctx.producer(mu)
    if not is_op(mnode, "ReduceMean") or mnode.inputs[0] is not v:
        return f"{nname(sub)} does not subtract the ReduceMean of its own first input"
    a1, a2 = reduce_axes(ctx, mnode), reduce_axes(ctx, vnode)
    for a in (a1, a2):
        if isinstance(a, str):
            return a
    if a1[0] != a2[0] or a1[1] != 1:
        return f"{nname(mnode)} / {nname(vnode)}: centring and variance over different axes"
    nodes += [vnode, sqr, sub, mnode]
    vs = _view_source(ctx, mnode, nodes)
    if isinstance(vs, str):
        return vs
    src, view, s = vs
    factor = 1.0
    if corr is not None:
        div, mul = corr
        known = {}
        if s is not None and view is not src:    # the (N, C, S) view: S from the source's shape
            vsh = static_shape(ctx, view)
            known[view.name] = (vsh[0], vsh[1], s)
        den = static_eval(ctx, div.inputs[1], nodes, shapes=known)
        num = static_eval(ctx, other(mul, var), nodes, shapes=known)
        if den is None or num is None or den.size != 1 or num.size != 1:
            return (f"{nname(mul)} / {nname(div)}: the variance correction S / (S - 1) needs a static "
                    f"spatial size (not known here)")
        factor = float(num.reshape(())) / float(den.reshape(()))
    if factor == 1.0:
        return src, eps, 0, s
    if s is None:
        return f"the spatial size of '{tname(src)}' is not static: the unbiased variance cannot be converted"
    if s < 2:
        return f"unbiased variance over S={s} value (undefined)"
    if not np.isclose(factor, s / (s - 1), rtol=1e-12, atol=0):
        return f"variance scaled by {factor:g}, neither 1 (biased) nor S/(S-1) = {s / (s - 1):g} (unbiased)"
    return src, eps, 1, s


class FuseAdaIN(Rule):
    name = "fuse-adain"
    summary = ("(c - mean(c)) / sqrt(var(c) + eps) * sqrt(var(s) + eps) + mean(s), biased or "
               "torch's unbiased var (same spatial size) -> normexport::AdaIN")
    anchors = ("Add",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        mul = ms = None
        for a in node.inputs:
            if is_op(ctx.producer(a), "Mul"):
                mul, ms = ctx.producer(a), other(node, a)
                break
        if mul is None or ms is None:
            return NoMatch(f"{nname(node)} does not add a mean to a Mul (not AdaIN's last step)")
        div = ss = None
        for a in mul.inputs:
            if is_op(ctx.producer(a), "Div"):
                div, ss = ctx.producer(a), other(mul, a)
                break
        if div is None or ss is None:
            return NoMatch(f"{nname(mul)} does not scale a Div (normalized content)")
        sub = ctx.producer(div.inputs[0])
        if not is_op(sub, "Sub"):
            return NoMatch(f"{nname(div)} does not divide a Sub (content - mean)")
        content, mc = sub.inputs
        sc = div.inputs[1]
        ref = static_shape(ctx, content)
        if ref is None or len(ref) < 3:
            return NoMatch(f"content '{tname(content)}' has unknown rank or rank < 3")
        # the four elementwise ops must not broadcast beyond the content: their other operands
        # are per-(n, c) statistics (checked below, Expand targets included)
        for n in (sub, div, mul, node):
            out = static_shape(ctx, n.outputs[0])
            if out is not None and (len(out) != len(ref) or any(isinstance(o, int) and o != r for o, r in zip(out, ref))):
                return NoMatch(f"{nname(n)}'s output shape {out} is not the content's {ref}")
        nodes: list[gs.Node] = [sub, div, mul, node]
        stats = {}
        for key, t, fn, what in (("mc", mc, _mean_stat, "content mean"), ("sc", sc, _std_stat, "content std"),
                                 ("ss", ss, _std_stat, "style std"), ("ms", ms, _mean_stat, "style mean")):
            r = fn(ctx, t, ref, nodes)
            if isinstance(r, str):
                return NoMatch(f"{what}: {r}")
            stats[key] = r
        if stats["mc"] is not content or stats["sc"][0] is not content:
            return NoMatch(f"the content statistics are not of '{tname(content)}', the tensor normalized")
        style = stats["ms"]
        if stats["ss"][0] is not style:
            return NoMatch(f"style mean of '{tname(style)}' but style std of '{tname(stats['ss'][0])}'")
        if style is content:
            return NoMatch("content and style are the same tensor (an identity, left alone)")
        (_, eps_c, corr_c, s_c), (_, eps_s, corr_s, s_s) = stats["sc"], stats["ss"]
        if eps_c != eps_s:
            return NoMatch(f"content epsilon {eps_c:g} != style epsilon {eps_s:g} (the op has one)")
        if corr_c != corr_s:
            return NoMatch("one variance is biased, the other unbiased")
        eps = eps_c
        if corr_c:
            if s_c != s_s:
                return NoMatch(f"unbiased variances over different spatial sizes (content {s_c}, style "
                               f"{s_s}): the S/(S-1) factors do not cancel, the op (biased) cannot "
                               f"express it")
            eps = eps_c * (s_c - 1) / s_c
        ss_ = static_shape(ctx, style)
        if ss_ is None or len(ss_) != len(ref) or not same_dim(ss_[0], ref[0]) or not same_dim(ss_[1], ref[1]):
            return NoMatch(f"style shape {ss_} does not have the content's rank, batch and channels {ref}")
        dt = float_dtype(ctx, content)
        if isinstance(dt, str):
            return NoMatch(dt)
        if ctx.dtype(style) != dt:
            return NoMatch(f"style is {ctx.dtype(style)}, content {dt}")
        nodes = graph_order(ctx, nodes)
        nodes.remove(node)
        nodes.append(node)
        if (why := private_set(ctx, nodes, node)):
            return NoMatch(why)
        return Match(nodes, anchor=node, content=content, style=style, eps=eps, unbiased=corr_c)

    def rewrite(self, ctx: Context, m: Match):
        return emit(ctx, m, OP, [m.content, m.style], {"epsilon": float(m.eps), "alpha": 1.0})


class FuseAdaINAlpha(Rule):
    name = "fuse-adain-alpha"
    summary = ("normexport::AdaIN(c, s) * alpha + c * (1 - alpha) (the content-style trade-off) "
               "-> normexport::AdaIN(alpha)")
    anchors = ("normexport::AdaIN",)

    def match(self, ctx: Context, node: gs.Node):
        alpha0 = float(node.attrs.get("alpha", 1.0))
        if alpha0 != 1.0:
            return NoMatch(f"{nname(node)} already has alpha {alpha0:g}")
        content, y = node.inputs[0], node.outputs[0]
        if ctx.is_graph_output(y) or len(ctx.consumers(y)) != 1 or not is_op(ctx.consumers(y)[0], "Mul"):
            return NoMatch(f"the output of {nname(node)} does not feed one Mul (no alpha blend)")
        mul_a = ctx.consumers(y)[0]
        a = ctx.scalar(other(mul_a, y))
        if a is None:
            return NoMatch(f"{nname(mul_a)} does not scale by a scalar constant alpha")
        z = mul_a.outputs[0]
        if ctx.is_graph_output(z) or len(ctx.consumers(z)) != 1 or not is_op(ctx.consumers(z)[0], "Add"):
            return NoMatch(f"alpha * AdaIN ({nname(mul_a)}) does not feed one Add")
        add = ctx.consumers(z)[0]
        mul_b = ctx.producer(other(add, z))
        if not is_op(mul_b, "Mul") or content not in mul_b.inputs:
            return NoMatch(f"{nname(add)} does not add (1 - alpha) * content")
        b = ctx.scalar(other(mul_b, content))
        if b is None:
            return NoMatch(f"{nname(mul_b)} does not scale the content by a scalar constant")
        if ctx.is_graph_output(mul_b.outputs[0]) or len(ctx.consumers(mul_b.outputs[0])) != 1:
            return NoMatch(f"'{tname(mul_b.outputs[0])}' is used outside the blend")
        # float32 constants: 1 - alpha rounded once (|a + b - 1| within a few float32 ulps)
        if abs(a + b - 1.0) > 4e-7:
            return NoMatch(f"weights {a:g} and {b:g} do not sum to 1 (not alpha * AdaIN + (1 - alpha) * content)")
        if not 0.0 <= a <= 1.0:
            return NoMatch(f"alpha {a:g} outside [0, 1] (the op's range)")
        return Match([node, mul_a, mul_b, add], anchor=node, alpha=a)

    def rewrite(self, ctx: Context, m: Match):
        node = m.anchor
        attrs = dict(node.attrs)
        attrs["alpha"] = float(m.alpha)
        return emit(ctx, m, OP, list(node.inputs), attrs, name=f"{node.name}_alpha")


RULES = (FuseAdaIN(), FuseAdaINAlpha())
