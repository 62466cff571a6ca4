"""Fuse Adaptive Instance Normalization written as standard ONNX into one
``normexport::AdaIN`` node.

Target (``normexport/ops/adain.py``): ``Y = sigma(s) * (c - mu(c)) / sigma(c) + mu(s)`` with
``sigma(t) = sqrt(biased var of t[n, ch] over the spatial dims + epsilon)``, alpha = 1.

Pattern ``fuse-adain`` (naoto0804/pytorch-AdaIN ``adaptive_instance_normalization`` /
``calc_mean_std`` as both torch exporters write it, and the biased-variance form; content c
and style s of shape (N, C, *spatial), same rank, N and C; model opset >= MIN_OPSET = 15, the
lowest the function bodies are written for)::

    V(t)     = Reshape(t, (N, C, -1))      (or t itself, reducing all spatial axes)
    mu(t)    = ReduceMean(V(t), spatial)
    var_b(t) = ReduceMean(Mul(D, D) | Pow(D, 2)),  D = Sub(V(t), ReduceMean(V(t), keepdims=1))
    var(t)   = var_b(t)                                   (biased)
             | Div(Mul(var_b(t), S), S - 1)               (torch's unbiased var(): S = the
                                                            number of reduced values, from a
                                                            constant or static shapes)
    sd(t)    = Sqrt(Add(var(t), eps)),   isd(t) = Reciprocal(sd(t)) | Div(1, sd(t))
    mu(t)    = ReduceMean(V(t)) | Div(ReduceSum(V(t)), S)     (torch.var_mean's decomposition)
    Y = Add(Mul(Div(Sub(c, mu(c)), sd(c)), sd(s)), mu(s))                 (A: naoto0804)
      | Add(Mul(Mul(Sub(c, mu(c)), isd(c)), sd(s)), mu(s))               (B: rsqrt)
      | Add(Mul(Sub(c, mu(c)), Mul(sd(s), isd(c)) | Div(sd(s), sd(c))), mu(s))
                                          (C: var_mean + rsqrt, normexport.nn.adain's forward)
    Between any two steps the statistics may pass through Reshape / Unsqueeze / Squeeze /
    Identity between (N, C) and (N, C, 1, ...) shapes and an Expand to the content's shape
    (``view(N, C, 1, 1).expand(size)``); each such step is checked to keep one value per (n, c)
    (symbolic shape arithmetic where the legacy exporter computes shapes at run time).

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


def _compact(s, ref) -> bool:
    """(N, C, 1, ...) or (N, C): one value per sample and channel."""
    return (s is not None and len(s) >= 2 and same_dim(s[0], ref[0]) and same_dim(s[1], ref[1])
            and all(d == 1 for d in s[2:]))


def _reshape_target(ctx: Context, p: gs.Node, src: tuple | None, visited: list[gs.Node]) -> tuple | None:
    """The output shape of Reshape ``p`` from its target, evaluated with symbolic dims (shape
    inference leaves e.g. a batch dim taken from Shape(x) at run time unknown); the shape
    nodes evaluated are added to ``visited`` when it succeeds."""
    seen: list[gs.Node] = []
    target = static_eval(ctx, p.inputs[1], seen, symbolic=True)
    if target is None or src is None:
        return None
    visited += seen
    out = []
    for i, v in enumerate(target.reshape(-1)):
        if isinstance(v, str):
            out.append(v)
        elif int(v) == 0 and not int(p.attrs.get("allowzero", 0)) and i < len(src):
            out.append(src[i])
        else:
            out.append(int(v))
    if out.count(-1) == 1:         # (N, C, 1, ..., -1) of an (N, C[, 1...]) tensor: the -1 is 1
        rest = [d for d in out if d != -1]
        if len(rest) >= 2 and rest[0] == src[0] and rest[1] == src[1] and all(d == 1 for d in rest[2:]) \
                and all(d == 1 for d in src[2:]):
            out[out.index(-1)] = 1
    return tuple(out) if -1 not in out else None


def _shape(ctx: Context, t: gs.Tensor, visited: list[gs.Node]) -> tuple | None:
    """Inferred shape; for a Reshape output with dims inference left unknown, the shape its
    target evaluates to (the nodes evaluated go to ``visited``)."""
    s = static_shape(ctx, t)
    p = ctx.producer(t)
    if is_op(p, "Reshape") and (s is None or any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in s)):
        return _reshape_target(ctx, p, static_shape(ctx, p.inputs[0]), visited) or s
    return s


def _walk(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]) -> gs.Tensor | str:
    """Walk back from a per-(n, channel) statistic through the shape-only nodes exporters put
    around it (Expand to the content's shape, Reshape / Unsqueeze / Squeeze / Identity between
    (N, C) and (N, C, 1, ...)); every step keeps one value per (n, channel): a Reshape only
    between compact (N, C, 1...) shapes (same N and C: the flat order maps (n, c) to (n, c)),
    an Expand only from a compact tensor to (a broadcast of) the content's shape."""
    rank = len(ref)
    while True:
        p = ctx.producer(t)
        if is_op(p, "Expand"):
            target = static_eval(ctx, p.inputs[1], [], symbolic=True)
            if target is None:
                if static_shape(ctx, p.outputs[0]) != ref or None in ref:
                    return f"the target of {nname(p)} is neither derivable nor the content's shape {ref}"
            elif len(target) > rank or any(not (v == 1 or v == r) for v, r in zip(target[::-1], ref[::-1])):
                return f"{nname(p)} expands to {list(target)}, beyond the content's shape {ref}"
            if not _compact(_shape(ctx, p.inputs[0], nodes), ref):
                return f"{nname(p)} expands '{tname(p.inputs[0])}', not a per-sample, per-channel statistic"
        elif is_op(p, "Reshape", "Unsqueeze", "Squeeze", "Identity"):
            shapes = (_shape(ctx, p.inputs[0], nodes), _shape(ctx, p.outputs[0], nodes))
            for x, shp in zip((p.inputs[0], p.outputs[0]), shapes):
                if not _compact(shp, ref):
                    return (f"{nname(p)} reshapes '{tname(x)}' (shape {shp}), not a per-sample, "
                            f"per-channel statistic (N, C, 1, ...)")
        else:
            return t
        nodes.append(p)
        t = p.inputs[0]


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


def _reduction(ctx: Context, t: gs.Tensor, ref: tuple, op: str, nodes: list[gs.Node]):
    u = _walk(ctx, t, ref, nodes)
    if isinstance(u, str):
        return u
    p = ctx.producer(u)
    if not is_op(p, op):
        return f"'{tname(u)}' is not a {op}"
    if not _compact(static_shape(ctx, u), ref):
        return f"{nname(p)}'s output {static_shape(ctx, u)} is not one value per sample and channel"
    nodes.append(p)
    return p


def _mean_stat(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]):
    """The source tensor whose per-(n, c) spatial mean ``t`` carries: ReduceMean, or
    Div(ReduceSum, S) with S the static number of reduced values (torch.var_mean's form)."""
    u = _walk(ctx, t, ref, nodes)
    if isinstance(u, str):
        return u
    p = ctx.producer(u)
    if is_op(p, "Div"):
        count = static_eval(ctx, p.inputs[1], nodes)
        rs = _reduction(ctx, p.inputs[0], ref, "ReduceSum", nodes)
        if isinstance(rs, str):
            return f"{nname(p)} is not ReduceSum / S: {rs}"
        nodes.append(p)
        vs = _view_source(ctx, rs, nodes)
        if isinstance(vs, str):
            return vs
        if count is None or count.size != 1 or vs[2] is None or float(count.reshape(())) != vs[2]:
            return f"{nname(p)} divides the sum by {count}, not by the number of values S={vs[2]}"
        return vs[0]
    rm = _reduction(ctx, u, ref, "ReduceMean", nodes)
    if isinstance(rm, str):
        return rm
    vs = _view_source(ctx, rm, nodes)
    if isinstance(vs, str):
        return vs
    return vs[0]


def _std_stat(ctx: Context, t: gs.Tensor, ref: tuple, nodes: list[gs.Node]):
    """(source, eps, correction 0/1, S) of sqrt(var + eps), or a reason."""
    if isinstance(t, tuple):          # ("inverse", tensor): 1 / sqrt(var + eps)
        u = _walk(ctx, t[1], ref, nodes)
        if isinstance(u, str):
            return u
        p = ctx.producer(u)
        if is_op(p, "Reciprocal"):
            nodes.append(p)
            return _std_stat(ctx, p.inputs[0], ref, nodes)
        if is_op(p, "Div") and ctx.scalar(p.inputs[0]) == 1.0:
            nodes.append(p)
            return _std_stat(ctx, p.inputs[1], ref, nodes)
        return f"'{tname(u)}' is not 1 / sqrt(var + eps) (Reciprocal or Div(1, .))"
    u = _walk(ctx, t, ref, nodes)
    if isinstance(u, str):
        return u
    sq = ctx.producer(u)
    if not is_op(sq, "Sqrt"):
        return f"'{tname(u)}' is not a Sqrt (the standard deviation)"
    a0 = _walk(ctx, sq.inputs[0], ref, nodes)
    if isinstance(a0, str):
        return a0
    add = ctx.producer(a0)
    if not is_op(add, "Add"):
        return f"the input of {nname(sq)} is not an Add of the variance and epsilon (eps inside the square root)"
    var = eps = None
    for a, b in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        if ctx.scalar(b) is not None and ctx.const(a) is None:
            var, eps = a, ctx.scalar(b)
    if var is None:
        return f"{nname(add)} does not add a scalar constant epsilon"
    nodes += [sq, add]
    var = _walk(ctx, var, ref, nodes)
    if isinstance(var, str):
        return var
    vnode = ctx.producer(var)
    corr = None
    if is_op(vnode, "Div"):                      # Div(Mul(var_b, S), S - 1): torch's unbiased var
        m0 = _walk(ctx, vnode.inputs[0], ref, nodes)
        if isinstance(m0, str):
            return m0
        mul = ctx.producer(m0)
        if not is_op(mul, "Mul"):
            return f"{nname(vnode)} is not var_b * S / (S - 1)"
        corr = (vnode, mul)
        for a, b in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            w = _walk(ctx, a, ref, [])
            if not isinstance(w, str) and is_op(ctx.producer(w), "ReduceMean"):
                var = _walk(ctx, a, ref, nodes)
                corr = (vnode, mul, a)
                break
        else:
            return f"{nname(mul)} does not scale a ReduceMean (the biased variance)"
        nodes += [vnode, mul]
        vnode = ctx.producer(var)
    if not _compact(static_shape(ctx, var), ref):
        return f"the variance '{tname(var)}' is not one value per sample and channel"
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
        div, mul, scaled = corr
        known = {}
        if s is not None and view is not src:    # the (N, C, S) view: S from the source's shape
            vsh = static_shape(ctx, view)
            known[view.name] = (vsh[0], vsh[1], s)
        den = static_eval(ctx, div.inputs[1], nodes, shapes=known)
        num = static_eval(ctx, other(mul, scaled), nodes, shapes=known)
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
    summary = ("(c - mean(c)) / sqrt(var(c) + eps) * sqrt(var(s) + eps) + mean(s) (Div / rsqrt / "
               "var_mean forms), biased or torch's unbiased var (same spatial size) -> normexport::AdaIN")
    anchors = ("Add",)

    def match(self, ctx: Context, node: gs.Node):
        if (why := opset_reason(ctx)):
            return NoMatch(why)
        reasons = []
        for a in node.inputs:
            mul = ctx.producer(a)
            ms = other(node, a)
            if not is_op(mul, "Mul") or ms is None:
                continue
            for x in mul.inputs:
                k = other(mul, x)
                if k is None:
                    continue
                r = self._form(ctx, node, mul, x, k, ms)
                if not isinstance(r, str):
                    return r
                reasons.append(r)
        if not reasons:
            return NoMatch(f"{nname(node)} does not add a mean to a Mul (not AdaIN's last step)")
        return NoMatch(reasons[0])

    def _form(self, ctx: Context, node: gs.Node, mul: gs.Node, x: gs.Tensor, k: gs.Tensor, ms: gs.Tensor):
        """Forms of the normalized content times the style's std (x: one Mul operand, k: the
        other): A Div(Sub(c, mean), sd(c)) * sd(s); B Mul(Sub(c, mean), 1 / sd(c)) * sd(s);
        C Sub(c, mean) * K with K = sd(s) * (1 / sd(c)) or sd(s) / sd(c) (torch.var_mean + rsqrt)."""
        p = ctx.producer(x)
        extra: list[gs.Node] = []
        if is_op(p, "Div") and is_op(ctx.producer(p.inputs[0]), "Sub"):
            sub, options = ctx.producer(p.inputs[0]), [(p.inputs[1], k)]
            extra = [p]
        elif is_op(p, "Mul") and any(is_op(ctx.producer(t), "Sub") for t in p.inputs):
            t_sub = next(t for t in p.inputs if is_op(ctx.producer(t), "Sub"))
            sub, options = ctx.producer(t_sub), [(("inverse", other(p, t_sub)), k)]
            extra = [p]
        elif is_op(p, "Sub"):
            sub = p
            kp = ctx.producer(k)
            if is_op(kp, "Mul"):
                options = [(("inverse", kp.inputs[1]), kp.inputs[0]), (("inverse", kp.inputs[0]), kp.inputs[1])]
            elif is_op(kp, "Div"):
                options = [(kp.inputs[1], kp.inputs[0])]
            else:
                return f"{nname(mul)} scales content - mean by '{tname(k)}', not by sd(style) / sd(content)"
            extra = [kp]
        else:
            return f"{nname(mul)} does not scale the normalized content (a Div / Mul of content - mean)"
        content, mc = sub.inputs
        ref = static_shape(ctx, content)
        if ref is None or len(ref) < 3:
            return f"content '{tname(content)}' has unknown rank or rank < 3"
        # the elementwise ops must not broadcast beyond the content: their other operands are
        # per-(n, c) statistics (checked below, Expand targets included)
        for n in (sub, *extra, mul, node):
            out = static_shape(ctx, n.outputs[0])
            if out is not None and (len(out) != len(ref) or any(isinstance(o, int) and isinstance(r, int) and o != r and o != 1
                                                                 for o, r in zip(out, ref))):
                return f"{nname(n)}'s output shape {out} does not broadcast per channel into the content's {ref}"
        first = None
        for sc, ss in options:
            nodes: list[gs.Node] = [sub, *extra, mul, node]
            stats = {}
            for key, t, fn, what in (("mc", mc, _mean_stat, "content mean"), ("sc", sc, _std_stat, "content std"),
                                     ("ss", ss, _std_stat, "style std"), ("ms", ms, _mean_stat, "style mean")):
                r = fn(ctx, t, ref, nodes)
                if isinstance(r, str):
                    stats = f"{what}: {r}"
                    break
                stats[key] = r
            if isinstance(stats, str):
                first = first or stats
                continue
            return self._finish(ctx, node, nodes, content, ref, stats)
        return first

    def _finish(self, ctx: Context, node: gs.Node, nodes: list[gs.Node], content: gs.Tensor, ref: tuple, stats: dict):
        if stats["mc"] is not content or stats["sc"][0] is not content:
            return f"the content statistics are not of '{tname(content)}', the tensor normalized"
        style = stats["ms"]
        if stats["ss"][0] is not style:
            return f"style mean of '{tname(style)}' but style std of '{tname(stats['ss'][0])}'"
        if style is content:
            return "content and style are the same tensor (an identity, left alone)"
        (_, eps_c, corr_c, s_c), (_, eps_s, corr_s, s_s) = stats["sc"], stats["ss"]
        if eps_c != eps_s:
            return f"content epsilon {eps_c:g} != style epsilon {eps_s:g} (the op has one)"
        if corr_c != corr_s:
            return "one variance is biased, the other unbiased"
        eps = eps_c
        if corr_c:
            if s_c != s_s:
                return (f"unbiased variances over different spatial sizes (content {s_c}, style "
                        f"{s_s}): the S/(S-1) factors do not cancel, the op (biased) cannot "
                        f"express it")
            eps = eps_c * (s_c - 1) / s_c
        ss_ = static_shape(ctx, style)
        if ss_ is None or len(ss_) != len(ref) or not same_dim(ss_[0], ref[0]) or not same_dim(ss_[1], ref[1]):
            return (f"style shape {ss_} does not have the content's rank, batch and channels {ref}")
        dt = float_dtype(ctx, content)
        if isinstance(dt, str):
            return dt
        if ctx.dtype(style) != dt:
            return f"style is {ctx.dtype(style)}, content {dt}"
        nodes = graph_order(ctx, nodes)
        nodes.remove(node)
        nodes.append(node)
        if (why := private_set(ctx, nodes, node)):
            return why
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
