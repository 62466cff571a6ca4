"""BatchNormalization folds on ONNX graphs: a BN in inference form is removed by rewriting the
weights of an adjacent Conv / ConvTranspose / Gemm / MatMul.

The math (the formulas themselves live in :mod:`normexport.fold.formulas`, the one
implementation shared with the module-level folder; here only the matching). An ONNX
``BatchNormalization`` with ``training_mode = 0`` and one output computes, over axis 1,

    y = scale (x - mean) / sqrt(var + epsilon) + B  =  s x + t,
    s = scale / sqrt(var + epsilon),   t = B - mean s                    (formulas.bn_scale_shift)

``fold-bn-after`` (BN reads the layer's output; always exact, any padding / stride / dilation /
groups / output_padding, since a per-channel affine map of the output commutes with nothing
and needs nothing but W and b):

    Conv           W'[o] = s[o] W[o],  b' = s b + t                       (fold_bn_after_conv)
    ConvTranspose  W'[i, j] = s[g(i) C_out/G + j] W[i, j], b' = s b + t   (transposed=True)
    Gemm           Y = alpha A op(B) + beta C (M, N), BN channel = column: a Gemm with
                   alpha = beta = 1, op(B') = alpha op(B) diag(s), C' = s beta C + t
                                                                          (fold_bn_after_gemm)
    MatMul         A (M, K) @ W (K, N) constant, output rank 2: BN's axis 1 is the column,
                   so it is the Gemm form with C absent -> Gemm(A, W', t'); MatMul + Add of a
                   constant bias c (a dense layer as tf2onnx and N-d Linear exports write it):
                   the Gemm form with C = c. An output of rank 3 (N, T, F) is not folded: BN's
                   axis 1 is T, while W mixes F.

``fold-bn-before`` (the layer reads the BN's output; BN's input takes its place):

    Conv           W'[o, j] = W[o, j] s[c(o, j)], b'[o] = b[o] + sum_{j,k} W[o, j, k] t[c(o, j)]
                   (fold_bn_before_conv). Exact only without zero padding: a padded tap sees 0
                   where the unfolded graph fed it t, so with any nonzero pad (explicit pads,
                   or SAME_* auto_pad with a kernel tap extent > 1) the fold is done only when
                   every t is exactly 0 (the reason says so otherwise).
    Gemm           transA = 0, A (M, K): op(B') = alpha diag(s) op(B), C' = alpha t op(B) + beta C
                   (fold_bn_before_gemm). transA = 1: BN's channel is A's row index: refused.
    MatMul         A (M, K) rank 2 @ W (K, N) constant -> Gemm(A, W', t W). Rank 3: refused.
    ConvTranspose  refused: t reaches each output position through a position-dependent number
                   of kernel taps, which no bias can express.

Every arithmetic step runs in float64 (numpy -> torch at the boundary) and the new weights are
cast back to the dtype of the weight they replace (float16 / float32 / float64 initializers keep
their dtype); a new bias takes the weight's dtype.

What is never folded (each with a NoMatch reason that ``--explain`` prints): a BN in training
mode or with its extra outputs used; a BN whose scale / B / mean / var is a graph input or
computed at run time (not a constant); a layer output used by anything besides the BN (or a
graph output); a layer weight / bias that is not a constant; a BN whose input rank does not put
the layer's channel on axis 1. A BN left in place is a standard op and runs as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ..fold import formulas
from .base import Context, Match, NoMatch, Rule

_DEFAULT = ("", "ai.onnx", None)
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_BN_INPUTS = ("scale", "B", "mean", "var")


def _label(node: gs.Node) -> str:
    return f"{node.op} '{node.name}'" if node.name else node.op


#: ops whose output is a constant when their inputs are (exporters without constant folding
#: compute a missing conv bias as Expand(0, shape), a weight through Cast / Reshape ...)
_CONST_OPS = frozenset({"Identity", "Expand", "Reshape", "Cast", "Unsqueeze", "Squeeze", "Transpose",
                        "Concat", "Flatten", "Mul", "Add", "Sub", "Div", "Neg", "Sqrt", "Reciprocal",
                        "ConstantOfShape", "Shape", "Gather", "Slice"})
_CONST_MAX_ELEMENTS = 1 << 26


def _const(ctx: Context, t: gs.Tensor | None, depth: int = 0) -> np.ndarray | None:
    """``ctx.const``, or the value of a small subgraph of ``_CONST_OPS`` over constants,
    evaluated with ONNX's reference implementation of each op (never a graph input)."""
    if t is None:
        return None
    v = ctx.const(t)
    if v is not None or depth >= 8 or ctx.is_graph_input(t):
        return v
    p = ctx.producer(t)
    if p is None or p.domain not in _DEFAULT or len(p.outputs) != 1:
        return None
    if p.op == "CastLike" and len(p.inputs) == 2:   # only the type of the second input counts
        v, like = _const(ctx, p.inputs[0], depth + 1), ctx.dtype(p.inputs[1])
        return None if v is None or like is None else v.astype(like)
    if p.op not in _CONST_OPS:
        return None
    feeds = {}
    for i in p.inputs:
        if isinstance(i, gs.Variable) and not i.name:
            continue   # an absent optional input
        iv = _const(ctx, i, depth + 1)
        if iv is None:
            return None
        feeds[i.name] = iv
    try:
        import onnx
        from onnx import numpy_helper
        from onnx.reference import ReferenceEvaluator
        attrs = {k: (numpy_helper.from_array(np.asarray(a.values)) if isinstance(a, gs.Constant) else a)
                 for k, a in p.attrs.items()}
        names = [i.name for i in p.inputs]
        node = onnx.helper.make_node(p.op, names, ["out"], **attrs)
        ins = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None)
               for n in dict.fromkeys(n for n in names if n)]
        graph = onnx.helper.make_graph([node], "const", ins, [onnx.helper.make_value_info("out", onnx.TypeProto())])
        # the op as the model's opset defines it (Squeeze / Slice / ... changed signature over time)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", ctx.opset or 1)])
        (out,) = ReferenceEvaluator(model).run(None, feeds)
    except Exception:   # anything unusual: treat as not constant
        return None
    out = np.asarray(out)
    return out if out.size <= _CONST_MAX_ELEMENTS else None


def _not_const_reason(ctx: Context, owner: gs.Node, what: str, t: gs.Tensor | None) -> str:
    if t is None:
        return f"{_label(owner)} has no {what}"
    if ctx.is_graph_input(t):
        return f"{_label(owner)}'s {what} '{t.name}' is a graph input, not a constant"
    p = ctx.producer(t)
    if p is not None:
        return f"{_label(owner)}'s {what} '{t.name}' is computed by {_label(p)}, not a constant"
    return f"{_label(owner)}'s {what} '{t.name}' is not a constant"


def _to_np(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy())


class _BN:
    """A BatchNormalization node in inference form, as ``y = s x + t`` (float64 torch)."""

    def __init__(self, node: gs.Node, s: torch.Tensor, t: torch.Tensor):
        self.node, self.s, self.t = node, s, t

    @property
    def channels(self) -> int:
        return int(self.s.numel())


def _read_bn(ctx: Context, bn: gs.Node) -> _BN | NoMatch:
    a = bn.attrs
    if int(a.get("training_mode", 0)) != 0:
        return NoMatch(f"{_label(bn)} has training_mode=1 (batch statistics): no fixed affine map")
    if "is_test" in a and int(a["is_test"]) == 0 and len(bn.outputs) > 1:
        return NoMatch(f"{_label(bn)} has is_test=0 (training form)")
    if int(a.get("spatial", 1)) != 1:
        return NoMatch(f"{_label(bn)} has spatial=0 (per-activation statistics, opset < 9): not a "
                       f"per-channel map")
    extra = [o for o in bn.outputs[1:] if o.name and (o.outputs or ctx.is_graph_output(o))]
    if extra:
        return NoMatch(f"{_label(bn)} has {len(bn.outputs)} outputs (training form); its running "
                       f"statistics output '{extra[0].name}' is used")
    if len(bn.inputs) != 5:
        return NoMatch(f"{_label(bn)} has {len(bn.inputs)} inputs, expected 5")
    vals = {}
    for what, t in zip(_BN_INPUTS, bn.inputs[1:]):
        v = _const(ctx, t)
        if v is None:
            return NoMatch(_not_const_reason(ctx, bn, what, t))
        if v.dtype not in _FLOATS:
            return NoMatch(f"{_label(bn)}'s {what} has element type {v.dtype}, not float16/32/64")
        vals[what] = v
    sizes = {what: v.size for what, v in vals.items()}
    if len(set(sizes.values())) != 1 or any(v.ndim != 1 for v in vals.values()):
        return NoMatch(f"{_label(bn)}: scale/B/mean/var shapes "
                       f"{[tuple(v.shape) for v in vals.values()]} are not one (C,) vector each")
    eps = float(a.get("epsilon", 1e-5))
    # epsilon is a float32 attribute: the float32 value is the one the op adds
    s, t = formulas.bn_scale_shift(vals["mean"], vals["var"], eps, vals["scale"], vals["B"])
    return _BN(bn, s, t)


def _layer_weight(ctx: Context, layer: gs.Node, idx: int, what: str) -> np.ndarray | NoMatch:
    t = layer.inputs[idx] if len(layer.inputs) > idx else None
    if t is None or (idx > 0 and not t.name and isinstance(t, gs.Variable)):
        return NoMatch(f"{_label(layer)} has no {what}")
    v = _const(ctx, t)
    if v is None:
        return NoMatch(_not_const_reason(ctx, layer, what, t))
    if v.dtype not in _FLOATS:
        return NoMatch(f"{_label(layer)}'s {what} has element type {v.dtype}, not float16/32/64")
    return v


def _optional(ctx: Context, layer: gs.Node, idx: int, what: str) -> np.ndarray | None | NoMatch:
    """An optional constant input: None when absent, NoMatch when present but not constant."""
    if len(layer.inputs) <= idx or (isinstance(layer.inputs[idx], gs.Variable) and not layer.inputs[idx].name):
        return None
    return _layer_weight(ctx, layer, idx, what)


def _rank(ctx: Context, t: gs.Tensor) -> int | None:
    return ctx.rank(t)


def _gemm_attrs(node: gs.Node) -> tuple[float, float, int, int]:
    a = node.attrs
    return (float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)), int(a.get("transA", 0)),
            int(a.get("transB", 0)))


def _pad_free(conv: gs.Node, w: np.ndarray) -> bool:
    """True when the conv reads no zero padding (every tap of every output sees an input)."""
    a = conv.attrs
    k = list(a.get("kernel_shape", w.shape[2:]))
    d = list(a.get("dilations", [1] * len(k)))
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return all(di * (ki - 1) == 0 for di, ki in zip(d, k))
    if auto == "VALID":
        return True
    return not any(int(p) for p in a.get("pads", []))


class _FoldRule(Rule):
    anchors = ("BatchNormalization",)

    def _new_layer(self, ctx: Context, old: gs.Node, x: gs.Tensor, w: np.ndarray, b: np.ndarray,
                   outputs: list, origin: gs.Node, op: str | None = None, attrs: dict | None = None) -> gs.Node:
        wc = ctx.constant(f"{old.name or old.op}_w_folded", w)
        bc = ctx.constant(f"{old.name or old.op}_b_folded", b)
        # the layer keeps its name (and so its metadata): the old node is detached right after
        return ctx.node(op or old.op, [x, wc, bc], outputs, name=old.name or None,
                        attrs=dict(old.attrs) if attrs is None else attrs, origin=origin)


class FoldBNAfter(_FoldRule):
    """BN that reads the only output of a Conv / ConvTranspose / Gemm / MatMul (constant weight)."""

    name = "fold-bn-after"
    summary = ("BatchNormalization after Conv / ConvTranspose (groups) / Gemm / MatMul with a constant "
               "2-D weight (+ Add of a constant bias): folded into the layer's weights (exact)")

    def match(self, ctx: Context, node: gs.Node) -> Match | NoMatch:
        bn = _read_bn(ctx, node)
        if not bn:
            return bn
        x = node.inputs[0]
        layer = ctx.producer(x)
        if layer is None:
            src = "a graph input" if ctx.is_graph_input(x) else "a constant"
            return NoMatch(f"{_label(node)}'s input '{x.name}' is {src}, not the output of a "
                           f"Conv/ConvTranspose/Gemm/MatMul")
        if layer.domain not in _DEFAULT or layer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add"):
            return NoMatch(f"{_label(node)}'s input comes from {_label(layer)}, not a "
                           f"Conv/ConvTranspose/Gemm/MatMul (or MatMul + Add of a constant bias)")
        if (why := ctx.private(x, node)) is not None:
            return NoMatch(f"{_label(layer)}'s output {why}: folding {_label(node)} would change "
                           f"what the other readers see")
        if len([o for o in layer.outputs if o.name]) != 1:
            return NoMatch(f"{_label(layer)} has more than one output")
        if layer.op in ("Conv", "ConvTranspose"):
            return self._conv(ctx, bn, layer)
        if layer.op == "Gemm":
            return self._gemm(ctx, bn, layer)
        if layer.op == "Add":   # a dense layer as MatMul + Add(bias) (tf2onnx, N-d Linear exports)
            return self._matmul_add(ctx, bn, layer)
        return self._matmul(ctx, bn, layer)

    def _matmul_add(self, ctx, bn: _BN, add: gs.Node):
        for k in (0, 1):
            c = _const(ctx, add.inputs[1 - k])
            mm = ctx.producer(add.inputs[k])
            if c is not None and mm is not None and mm.op == "MatMul" and mm.domain in _DEFAULT:
                break
        else:
            return NoMatch(f"{_label(bn.node)}'s input comes from {_label(add)}, which does not add a "
                           f"constant bias to a MatMul")
        if (why := ctx.private(add.inputs[k], add)) is not None:
            return NoMatch(f"{_label(mm)}'s output {why}: folding would change what the other readers see")
        if c.dtype not in _FLOATS or c.ndim > 2:
            return NoMatch(f"{_label(add)}'s bias has shape {tuple(c.shape)} ({c.dtype}): not a Gemm bias")
        m = self._matmul(ctx, bn, mm)
        if not m:
            return m
        n = bn.channels
        if c.ndim >= 1 and c.shape[-1] not in (1, n):
            return NoMatch(f"{_label(add)}'s bias has shape {tuple(c.shape)}, which does not broadcast to (M, {n})")
        return Match([mm, add, bn.node], bn=bn, w=m.w, c=c, alpha=1.0, beta=1.0, trans_b=0, kind="matmul")

    def _conv(self, ctx, bn: _BN, layer: gs.Node):
        w = _layer_weight(ctx, layer, 1, "weight")
        if isinstance(w, NoMatch):
            return w
        b = _optional(ctx, layer, 2, "bias")
        if isinstance(b, NoMatch):
            return b
        groups = int(layer.attrs.get("group", 1))
        transposed = layer.op == "ConvTranspose"
        c_out = w.shape[1] * groups if transposed else w.shape[0]
        if w.ndim < 3 or c_out != bn.channels:
            return NoMatch(f"{_label(layer)} (weight {tuple(w.shape)}, group={groups}) has {c_out} output "
                           f"channels, {_label(bn.node)} {bn.channels}")
        if transposed and w.shape[0] % groups:
            return NoMatch(f"{_label(layer)}: weight dim 0 ({w.shape[0]}) not divisible by group={groups}")
        return Match([layer, bn.node], bn=bn, w=w, b=b, groups=groups, transposed=transposed)

    def _gemm(self, ctx, bn: _BN, layer: gs.Node):
        alpha, beta, _trans_a, trans_b = _gemm_attrs(layer)
        w = _layer_weight(ctx, layer, 1, "B")
        if isinstance(w, NoMatch):
            return w
        c = _optional(ctx, layer, 2, "C")
        if isinstance(c, NoMatch):
            return c
        if w.ndim != 2:
            return NoMatch(f"{_label(layer)}'s B has shape {tuple(w.shape)}, not 2-D")
        n = w.shape[0] if trans_b else w.shape[1]
        if n != bn.channels:
            return NoMatch(f"{_label(layer)} has {n} output columns, {_label(bn.node)} {bn.channels} channels")
        if c is not None and (c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, n))):
            return NoMatch(f"{_label(layer)}'s C has shape {tuple(c.shape)}, which does not broadcast to (M, {n})")
        return Match([layer, bn.node], bn=bn, w=w, c=c, alpha=alpha, beta=beta, trans_b=trans_b, kind="gemm")

    def _matmul(self, ctx, bn: _BN, layer: gs.Node):
        w = _const(ctx, layer.inputs[1])
        if w is None:
            return NoMatch(_not_const_reason(ctx, layer, "second input (weight)", layer.inputs[1]))
        if w.ndim != 2 or w.dtype not in _FLOATS:
            return NoMatch(f"{_label(layer)}'s weight has shape {tuple(w.shape)} ({w.dtype}), not a 2-D "
                           f"float matrix")
        rank = _rank(ctx, bn.node.inputs[0])
        if rank is None:
            return NoMatch(f"{_label(layer)}'s output rank is unknown (no shape information): cannot tell "
                           f"whether BN's axis 1 is the MatMul's feature axis")
        if rank != 2:
            return NoMatch(f"{_label(layer)}'s output has rank {rank}: {_label(bn.node)} normalizes axis 1, "
                           f"the MatMul's features are the last axis (folded only for 2-D (N, features))")
        if w.shape[1] != bn.channels:
            return NoMatch(f"{_label(layer)} has {w.shape[1]} output features, {_label(bn.node)} "
                           f"{bn.channels} channels")
        return Match([layer, bn.node], bn=bn, w=w, c=None, alpha=1.0, beta=1.0, trans_b=0, kind="matmul")

    def rewrite(self, ctx: Context, m: Match) -> list[gs.Node]:
        layer, bnn = m.nodes[0], m.nodes[-1]
        x = layer.inputs[0]
        out = list(bnn.outputs[:1])
        if layer.op in ("Conv", "ConvTranspose"):
            w, b = formulas.fold_bn_after_conv(m.w, m.b, m.bn.s, m.bn.t, transposed=m.transposed,
                                               groups=m.groups)
            return [self._new_layer(ctx, layer, x, _to_np(w), _to_np(b), out, bnn)]
        w, c = formulas.fold_bn_after_gemm(m.w, m.c, m.bn.s, m.bn.t, alpha=m.alpha, beta=m.beta,
                                           trans_b=bool(m.trans_b))
        attrs = dict(layer.attrs) if m.kind == "gemm" else {}
        attrs.update(alpha=1.0, beta=1.0, transB=int(m.trans_b))
        return [self._new_layer(ctx, layer, x, _to_np(w), _to_np(c), out, bnn, op="Gemm", attrs=attrs)]


class FoldBNBefore(_FoldRule):
    """BN whose output only a Conv / Gemm / MatMul (constant weight) reads, where exact."""

    name = "fold-bn-before"
    summary = ("BatchNormalization before Conv (no zero padding, or zero shift) / Gemm (transA=0) / "
               "MatMul with a constant 2-D weight on a 2-D input: folded into the layer's weights")

    def match(self, ctx: Context, node: gs.Node) -> Match | NoMatch:
        bn = _read_bn(ctx, node)
        if not bn:
            return bn
        y = node.outputs[0]
        users = ctx.consumers(y)
        if ctx.is_graph_output(y):
            return NoMatch(f"{_label(node)}'s output '{y.name}' is a graph output")
        if len(users) != 1:
            return NoMatch(f"{_label(node)}'s output is read by {len(users)} nodes, not by one layer alone")
        layer = users[0]
        if layer.domain not in _DEFAULT or layer.op not in ("Conv", "Gemm", "MatMul"):
            if layer.op == "ConvTranspose" and layer.domain in _DEFAULT:
                return NoMatch(f"{_label(node)} feeds {_label(layer)}: a BN before a ConvTranspose is not "
                               f"folded (its shift reaches each output through a position-dependent "
                               f"number of kernel taps, which no bias can express)")
            return NoMatch(f"{_label(node)}'s output goes to {_label(layer)}, not a Conv/Gemm/MatMul")
        if layer.inputs[0] is not y or any(t is y for t in layer.inputs[1:]):
            return NoMatch(f"{_label(node)}'s output is not (only) the data input of {_label(layer)}")
        if layer.op == "Conv":
            return self._conv(ctx, bn, layer)
        return self._gemm(ctx, bn, layer)

    def _conv(self, ctx, bn: _BN, layer: gs.Node):
        w = _layer_weight(ctx, layer, 1, "weight")
        if isinstance(w, NoMatch):
            return w
        b = _optional(ctx, layer, 2, "bias")
        if isinstance(b, NoMatch):
            return b
        groups = int(layer.attrs.get("group", 1))
        if w.ndim < 3 or w.shape[1] * groups != bn.channels or w.shape[0] % groups:
            return NoMatch(f"{_label(layer)} (weight {tuple(w.shape)}, group={groups}) does not take "
                           f"{bn.channels} input channels")
        if not _pad_free(layer, w) and bool((bn.t != 0).any()):
            return NoMatch(f"{_label(layer)} zero-pads its input: the padded taps would see the BN's shift "
                           f"t = B - scale mean / sqrt(var + eps) instead of 0 (not exact)")
        return Match([bn.node, layer], bn=bn, w=w, b=b, groups=groups, kind="conv")

    def _gemm(self, ctx, bn: _BN, layer: gs.Node):
        rank = _rank(ctx, bn.node.inputs[0])
        if rank is None:
            return NoMatch(f"{_label(bn.node)}'s input rank is unknown (no shape information)")
        if rank != 2:
            return NoMatch(f"{_label(bn.node)}'s input has rank {rank}: it normalizes axis 1, {_label(layer)} "
                           f"contracts the last axis (folded only for 2-D (N, features))")
        if layer.op == "Gemm":
            alpha, beta, trans_a, trans_b = _gemm_attrs(layer)
            if trans_a:
                return NoMatch(f"{_label(layer)} has transA=1: the BN's channels are A's rows, not the "
                               f"contracted columns")
            w = _layer_weight(ctx, layer, 1, "B")
            if isinstance(w, NoMatch):
                return w
            c = _optional(ctx, layer, 2, "C")
            if isinstance(c, NoMatch):
                return c
            attrs = dict(layer.attrs)
        else:
            w = _const(ctx, layer.inputs[1])
            if w is None:
                return NoMatch(_not_const_reason(ctx, layer, "second input (weight)", layer.inputs[1]))
            if w.dtype not in _FLOATS:
                return NoMatch(f"{_label(layer)}'s weight has element type {w.dtype}")
            alpha, beta, trans_b, c, attrs = 1.0, 1.0, 0, None, {}
        if w.ndim != 2:
            return NoMatch(f"{_label(layer)}'s weight has shape {tuple(w.shape)}, not 2-D")
        k = w.shape[1] if trans_b else w.shape[0]
        if k != bn.channels:
            return NoMatch(f"{_label(layer)} contracts {k} features, {_label(bn.node)} has {bn.channels} channels")
        return Match([bn.node, layer], bn=bn, w=w, c=c, alpha=alpha, beta=beta, trans_b=trans_b,
                     attrs=attrs, kind="gemm")

    def rewrite(self, ctx: Context, m: Match) -> list[gs.Node]:
        bnn, layer = m.nodes
        x = bnn.inputs[0]
        out = list(layer.outputs)
        if m.kind == "conv":
            w, b = formulas.fold_bn_before_conv(m.w, m.b, m.bn.s, m.bn.t, groups=m.groups)
            return [self._new_layer(ctx, layer, x, _to_np(w), _to_np(b), out, layer)]
        w, c = formulas.fold_bn_before_gemm(m.w, m.c, m.bn.s, m.bn.t, alpha=m.alpha, beta=m.beta,
                                            trans_b=bool(m.trans_b))
        attrs = dict(m.attrs)
        attrs.update(alpha=1.0, beta=1.0, transB=int(m.trans_b))
        return [self._new_layer(ctx, layer, x, _to_np(w), _to_np(c), out, layer, op="Gemm", attrs=attrs)]


FOLD_RULES: tuple[Rule, ...] = (FoldBNAfter(), FoldBNBefore())
