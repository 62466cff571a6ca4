"""normexport.passes fold rules (fold-bn-after / fold-bn-before) on hand-built ONNX graphs and on
graphs from torch's two exporters: each fold matches and the rewritten graph (ORT) equals an
independent float64 numpy evaluation of the unfolded graph; each refusal leaves the graph as it
was and says why."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from normexport import passes
from normexport.passes import NoMatch, rewrite
from normexport.passes.base import import_graph
from normexport.passes.fold_bn import FoldBNAfter, FoldBNBefore
from normexport.reference import _conv
from normexport.reference.batchnorm import batch_norm_eval
from normexport.runtime import session

FOLDS = ["fold-bn-after", "fold-bn-before"]
ONNX_TYPES = {np.float32: TP.FLOAT, np.float16: TP.FLOAT16, np.float64: TP.DOUBLE}


# ---- an independent float64 evaluation of the unfolded graphs --------------------------------

def _conv_transpose_np(x, w, b, strides, pads, groups):
    """ConvTranspose from its definition: input position i scatters x[c, i] w[c, o, k] to output
    position i * stride + k, then the pads are cropped."""
    nsp = x.ndim - 2
    cin_g, cout_g = w.shape[0] // groups, w.shape[1]
    full = [(x.shape[2 + d] - 1) * strides[d] + w.shape[2 + d] for d in range(nsp)]
    y = np.zeros((x.shape[0], cout_g * groups, *full))
    for g in range(groups):
        xg, wg = x[:, g * cin_g:(g + 1) * cin_g], w[g * cin_g:(g + 1) * cin_g]
        for k in np.ndindex(*w.shape[2:]):
            contrib = np.einsum("nc...,co->no...", xg, wg[(slice(None), slice(None)) + k])
            idx = tuple(slice(k[d], k[d] + strides[d] * (x.shape[2 + d] - 1) + 1, strides[d]) for d in range(nsp))
            y[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + idx] += contrib
    y = y[(slice(None), slice(None)) + tuple(slice(pads[d], full[d] - pads[nsp + d]) for d in range(nsp))]
    return y if b is None else y + b.reshape((1, -1) + (1,) * nsp)


def np_eval(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Float64 numpy evaluation of the ops these tests build (written from the ONNX op
    definitions; no code shared with the passes or the formulas)."""
    env = {k: np.asarray(v, np.float64) for k, v in feeds.items()}
    env.update({i.name: nh.to_array(i).astype(np.float64) for i in model.graph.initializer})
    for n in model.graph.node:
        a = {x.name: h.get_attribute_value(x) for x in n.attribute}
        ins = [env[i] if i else None for i in n.input]
        if n.op_type == "Conv":
            x, w = ins[0], ins[1]
            nsp = w.ndim - 2
            pads = list(a.get("pads", [0] * 2 * nsp))
            xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[nsp + d]) for d in range(nsp)])
            y = _conv.conv(xp, w, None, tuple(a.get("strides", [1] * nsp)), 0,
                           tuple(a.get("dilations", [1] * nsp)), a.get("group", 1))
            out = y if len(ins) < 3 or ins[2] is None else y + ins[2].reshape((1, -1) + (1,) * nsp)
        elif n.op_type == "ConvTranspose":
            nsp = ins[1].ndim - 2
            out = _conv_transpose_np(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                     a.get("strides", [1] * nsp), a.get("pads", [0] * 2 * nsp), a.get("group", 1))
        elif n.op_type == "Gemm":
            A = ins[0].T if a.get("transA", 0) else ins[0]
            B = ins[1].T if a.get("transB", 0) else ins[1]
            out = a.get("alpha", 1.0) * A @ B
            if len(ins) > 2 and ins[2] is not None:
                out = out + a.get("beta", 1.0) * ins[2]
        elif n.op_type == "MatMul":
            out = ins[0] @ ins[1]
        elif n.op_type == "BatchNormalization":
            out = batch_norm_eval(ins[0], ins[1], ins[2], ins[3], ins[4], float(np.float32(a.get("epsilon", 1e-5))))
        elif n.op_type == "Relu":
            out = np.maximum(ins[0], 0)
        elif n.op_type in ("Mul", "Add"):
            out = ins[0] * ins[1] if n.op_type == "Mul" else ins[0] + ins[1]
        elif n.op_type == "Identity":
            out = ins[0]
        elif n.op_type == "Unsqueeze":      # opset < 13 form: axes attribute
            out = ins[0]
            for ax in sorted(a["axes"]):
                out = np.expand_dims(out, ax)
        else:
            raise NotImplementedError(n.op_type)
        env[n.output[0]] = out
    return [env[o.name] for o in model.graph.output]


def assert_normwise(actual, expected, rtol, atol=0.0):
    err = float(np.abs(np.asarray(actual, np.float64) - expected).max())
    bound = atol + rtol * float(np.abs(expected).max())
    assert err <= bound, f"max abs err {err:.3g} > {bound:.3g}"
    return err


# ---- graph builders ----------------------------------------------------------------------------

def _bn_inits(rng, prefix, c, dtype, shift=True):
    return [nh.from_array((rng.random(c) * 1.5 + 0.5).astype(dtype), prefix + "scale"),
            nh.from_array((rng.standard_normal(c) if shift else np.zeros(c)).astype(dtype), prefix + "B"),
            nh.from_array((rng.standard_normal(c) if shift else np.zeros(c)).astype(dtype), prefix + "mean"),
            nh.from_array((rng.random(c) + 0.5).astype(dtype), prefix + "var")]


def _bn(inp, out, prefix="bn_", name="bn", eps=1e-3):
    return h.make_node("BatchNormalization", [inp] + [prefix + k for k in ("scale", "B", "mean", "var")],
                       [out], name=name, epsilon=eps)


def _model(nodes, inits, x_shape, y_shape, dtype=np.float32, opset=17, extra_inputs=()):
    t = ONNX_TYPES[dtype]
    if y_shape is None:   # same rank as x, sizes left to shape inference
        y_shape = [None] * len(x_shape)
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", t, x_shape), *extra_inputs],
                     [h.make_tensor_value_info("y", t, y_shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def conv_bn(rng, *, nsp=2, groups=1, bias=True, pads=1, stride=1, dtype=np.float32, transposed=False, c_in=4, c_out=6):
    k = (3,) * nsp
    w_shape = (c_in, c_out // groups, *k) if transposed else (c_out, c_in // groups, *k)
    inits = [nh.from_array(rng.standard_normal(w_shape).astype(dtype), "W")]
    ins = ["x", "W"]
    if bias:
        inits.append(nh.from_array(rng.standard_normal(c_out).astype(dtype), "b"))
        ins.append("b")
    op = "ConvTranspose" if transposed else "Conv"
    layer = h.make_node(op, ins, ["h"], name="layer", group=groups, pads=[pads] * 2 * nsp, strides=[stride] * nsp)
    return _model([layer, _bn("h", "y")], inits + _bn_inits(rng, "bn_", c_out, dtype),
                  ["N", c_in] + [7] * nsp, None, dtype)


def gemm_bn(rng, *, trans_a=0, trans_b=0, alpha=1.0, beta=1.0, c_shape=(5,), dtype=np.float32, m=3):
    k, n = 4, 5
    inits = [nh.from_array(rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype), "B")]
    ins = ["x", "B"]
    if c_shape is not None:
        inits.append(nh.from_array(rng.standard_normal(c_shape).astype(dtype), "C"))
        ins.append("C")
    layer = h.make_node("Gemm", ins, ["h"], name="layer", alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
    return _model([layer, _bn("h", "y")], inits + _bn_inits(rng, "bn_", n, dtype),
                  [k, m] if trans_a else [m, k], [m, n], dtype)


def matmul_bn(rng, x_shape=("N", 4), dtype=np.float32):
    inits = [nh.from_array(rng.standard_normal((4, 5)).astype(dtype), "W")]
    c = 5 if len(x_shape) == 2 else x_shape[1]
    layer = h.make_node("MatMul", ["x", "W"], ["h"], name="layer")
    return _model([layer, _bn("h", "y")], inits + _bn_inits(rng, "bn_", c, dtype), list(x_shape), None, dtype)


def bn_conv(rng, *, pads=0, shift=True, groups=1, bias=True, auto_pad=None):
    inits = [nh.from_array(rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32), "W")]
    ins = ["x", "W"]
    if bias:
        inits.append(nh.from_array(rng.standard_normal(6).astype(np.float32), "b"))
        ins.append("b")
    kw = {"auto_pad": auto_pad} if auto_pad else {"pads": [pads] * 4}
    layer = h.make_node("Conv", ["xn"] + ins[1:], ["y"], name="layer", group=groups, **kw)
    return _model([_bn("x", "xn"), layer], inits + _bn_inits(rng, "bn_", 4, np.float32, shift), ["N", 4, 7, 7], None)


def bn_gemm(rng, *, trans_b=0, alpha=1.0, beta=1.0, c_shape=(5,), matmul=False):
    inits = [nh.from_array(rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32), "B")]
    if matmul:
        layer = h.make_node("MatMul", ["xn", "B"], ["y"], name="layer")
    else:
        ins = ["xn", "B"]
        if c_shape is not None:
            inits.append(nh.from_array(rng.standard_normal(c_shape).astype(np.float32), "C"))
            ins.append("C")
        layer = h.make_node("Gemm", ins, ["y"], name="layer", alpha=alpha, beta=beta, transB=trans_b)
    return _model([_bn("x", "xn"), layer], inits + _bn_inits(rng, "bn_", 4, np.float32), [3, 4], [3, 5])


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _run_ort(model, feeds):
    return session(model, ["CPUExecutionProvider"]).run(None, feeds)


def check_fold(model, rule, *, feeds=None, rtol=2e-5, atol=0.0, seed=0):
    """rewrite with one rule: it applied once, no BN is left, the driver verified it, and the
    rewritten graph in ORT equals the float64 numpy evaluation of the original graph."""
    new, report = rewrite(model, [rule], feeds=feeds)
    assert report.ok, report.format()
    assert report.counts() == {rule: 1}, report.format()
    assert "BatchNormalization" not in _ops(new)
    assert report.verifications and all(report.verifications)
    if feeds is None:
        feeds = passes.verify.make_feeds(model)
    expected = np_eval(model, feeds)[0]
    return new, assert_normwise(_run_ort(new, feeds)[0], expected, rtol, atol)


# ---- fold-bn-after ------------------------------------------------------------------------------

@pytest.mark.parametrize("nsp,groups,bias,pads,stride", [
    (2, 1, True, 1, 1), (2, 2, False, 1, 2), (2, 4, True, 0, 1),   # groups=4 with C_in=4: depthwise-like
    (1, 1, False, 2, 1), (3, 2, True, 1, 1)])
def test_bn_after_conv(rng, nsp, groups, bias, pads, stride):
    c_out = 8 if groups == 4 else 6
    model = conv_bn(rng, nsp=nsp, groups=groups, bias=bias, pads=pads, stride=stride, c_out=c_out)
    new, _ = check_fold(model, "fold-bn-after")
    assert _ops(new) == ["Conv"] and new.graph.node[0].name == "layer"
    conv = new.graph.node[0]
    assert {a.name: h.get_attribute_value(a) for a in conv.attribute}["group"] == groups
    assert len(conv.input) == 3   # a bias appears where there was none


@pytest.mark.parametrize("groups,bias,stride", [(1, True, 1), (2, False, 2), (2, True, 1)])
def test_bn_after_conv_transpose(rng, groups, bias, stride):
    model = conv_bn(rng, groups=groups, bias=bias, stride=stride, transposed=True, pads=1)
    new, _ = check_fold(model, "fold-bn-after")
    assert _ops(new) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta,c_shape", [
    (0, 0, 1.0, 1.0, (5,)), (0, 1, 0.5, 2.0, (5,)), (0, 1, 1.0, 1.0, None), (0, 0, 1.5, 0.5, (1, 5)),
    (0, 0, 1.0, 1.0, (3, 1)), (0, 1, 1.0, 0.25, (3, 5)), (0, 0, 1.0, 1.0, ()), (1, 0, 2.0, 1.0, (5,))])
def test_bn_after_gemm(rng, trans_a, trans_b, alpha, beta, c_shape):
    model = gemm_bn(rng, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, c_shape=c_shape)
    new, _ = check_fold(model, "fold-bn-after")
    (g,) = new.graph.node
    attrs = {a.name: h.get_attribute_value(a) for a in g.attribute}
    assert g.op_type == "Gemm" and attrs["alpha"] == 1.0 and attrs["beta"] == 1.0 and attrs["transB"] == trans_b


def test_bn_after_matmul_2d(rng):
    new, _ = check_fold(matmul_bn(rng), "fold-bn-after")
    assert _ops(new) == ["Gemm"]


def test_bn_after_matmul_3d_is_refused_with_reason(rng):
    model = matmul_bn(rng, x_shape=(2, 3, 4))     # (N, T, F): BN's axis 1 is T
    new, report = rewrite(model, ["fold-bn-after"], explain=True)
    assert report.ok and report.counts() == {"fold-bn-after": 0} and new is model
    (e,) = [e for e in report.explanations if e.rule == "fold-bn-after"]
    assert "rank 3" in e.reason and "axis 1" in e.reason and e.node == "bn"


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_fold_keeps_initializer_dtype(rng, dtype):
    model = gemm_bn(rng, trans_b=1, c_shape=(5,), dtype=dtype) if dtype == np.float64 else conv_bn(rng, dtype=dtype)
    new, report = rewrite(model, ["fold-bn-after"])
    assert report.ok and report.counts() == {"fold-bn-after": 1}, report.format()
    want = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert {i.data_type for i in new.graph.initializer} == {want}
    feeds = passes.verify.make_feeds(model)
    got = _run_ort(new, feeds)[0]
    assert got.dtype == dtype
    expected = np_eval(model, feeds)[0]
    # float16: the input, the folded weights and the conv's output are rounded to float16
    assert_normwise(got, expected, 1e-2 if dtype == np.float16 else 1e-12)


def test_fold_float16_rounds_once_from_float64(rng):
    """The folded float16 weight is the float64 product s W rounded once (not s rounded, then
    the product rounded)."""
    model = conv_bn(rng, dtype=np.float16, bias=False)
    new, _ = rewrite(model, ["fold-bn-after"])
    init = {i.name: nh.to_array(i) for i in model.graph.initializer}
    w_new = next(nh.to_array(i) for i in new.graph.initializer if i.dims[:1] == [6] and len(i.dims) == 4)
    s = init["bn_scale"].astype(np.float64) / np.sqrt(init["bn_var"].astype(np.float64) + float(np.float32(1e-3)))
    np.testing.assert_array_equal(w_new, (init["W"].astype(np.float64) * s[:, None, None, None]).astype(np.float16))


def test_bn_after_bn_after_conv_both_fold(rng):
    m = conv_bn(rng)
    g = m.graph
    g.node[-1].output[0] = "h2"
    g.node.append(_bn("h2", "y", prefix="bn2_", name="bn2", eps=1e-5))
    g.initializer.extend(_bn_inits(rng, "bn2_", 6, np.float32))
    new, _ = rewrite(m, ["fold-bn-after"])
    assert _ops(new) == ["Conv"]
    feeds = passes.verify.make_feeds(m)
    assert_normwise(_run_ort(new, feeds)[0], np_eval(m, feeds)[0], 2e-5)


# ---- fold-bn-before -----------------------------------------------------------------------------

@pytest.mark.parametrize("groups,bias,pads,shift,auto_pad", [
    (1, True, 0, True, None), (2, False, 0, True, None), (1, True, 1, False, None),  # padded, t = 0
    (1, True, 0, True, "VALID")])
def test_bn_before_conv(rng, groups, bias, pads, shift, auto_pad):
    model = bn_conv(rng, pads=pads, shift=shift, groups=groups, bias=bias, auto_pad=auto_pad)
    new, _ = check_fold(model, "fold-bn-before")
    assert _ops(new) == ["Conv"] and new.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("pads,auto_pad", [(1, None), (0, "SAME_UPPER")])
def test_bn_before_zero_padded_conv_is_refused(rng, pads, auto_pad):
    model = bn_conv(rng, pads=pads, auto_pad=auto_pad)
    new, report = rewrite(model, ["fold-bn-before"], explain=True)
    assert new is model and report.counts() == {"fold-bn-before": 0}
    (e,) = report.explanations
    assert "zero-pads" in e.reason and "not exact" in e.reason


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [(0, 1.0, 1.0, (5,)), (1, 0.5, 2.0, (1, 5)),
                                                        (1, 1.0, 1.0, None), (0, 2.0, 1.0, (3, 5))])
def test_bn_before_gemm(rng, trans_b, alpha, beta, c_shape):
    new, _ = check_fold(bn_gemm(rng, trans_b=trans_b, alpha=alpha, beta=beta, c_shape=c_shape), "fold-bn-before")
    assert _ops(new) == ["Gemm"] and new.graph.node[0].input[0] == "x"


def test_bn_before_matmul(rng):
    new, _ = check_fold(bn_gemm(rng, matmul=True), "fold-bn-before")
    assert _ops(new) == ["Gemm"]


def test_bn_before_conv_transpose_is_refused(rng):
    inits = [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")]
    m = _model([_bn("x", "xn"), h.make_node("ConvTranspose", ["xn", "W"], ["y"], name="layer")],
               inits + _bn_inits(rng, "bn_", 4, np.float32), ["N", 4, 5, 5], None)
    new, report = rewrite(m, explain=True)
    assert new is m
    reasons = {e.rule: e.reason for e in report.explanations}
    assert "position-dependent" in reasons["fold-bn-before"]
    assert "graph input" in reasons["fold-bn-after"]


# ---- no-match cases: untouched graph, a reason ---------------------------------------------------

def _same_graph(a: onnx.ModelProto, b: onnx.ModelProto):
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    assert a.SerializeToString() == b.SerializeToString()


def test_bn_stats_as_graph_inputs_are_not_folded(rng):
    m = conv_bn(rng)
    g = m.graph
    mean = next(i for i in g.initializer if i.name == "bn_mean")
    g.initializer.remove(mean)
    g.input.append(h.make_tensor_value_info("bn_mean", TP.FLOAT, [6]))
    before = m.SerializeToString()
    new, report = rewrite(m, explain=True)
    _same_graph(new, m)
    assert m.SerializeToString() == before and report.applied == []
    assert any(e.reason == "BatchNormalization 'bn''s mean 'bn_mean' is a graph input, not a constant"
               for e in report.explanations), report.format()


def test_conv_output_used_twice_is_not_folded(rng):
    m = conv_bn(rng)
    g = m.graph
    g.node.append(h.make_node("Relu", ["h"], ["r"], name="relu"))
    g.output.append(h.make_tensor_value_info("r", TP.FLOAT, [None] * 4))
    new, report = rewrite(m, explain=True)
    _same_graph(new, m)
    reasons = {e.rule: e.reason for e in report.explanations}
    assert "also used by 'relu'" in reasons["fold-bn-after"], reasons


def test_mul_that_is_not_an_affine_is_left_alone(rng):
    """Conv -> Mul by a full (C, H, W) tensor -> BN: the Mul is not a per-channel affine, and
    the BN reads the Mul, not the conv: nothing is rewritten."""
    inits = [nh.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal((6, 5, 5)).astype(np.float32), "M")]
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"), h.make_node("Mul", ["c", "M"], ["h"], name="mul"),
             _bn("h", "y")]
    m = _model(nodes, inits + _bn_inits(rng, "bn_", 6, np.float32), ["N", 4, 7, 7], None)
    new, report = rewrite(m, explain=True)
    _same_graph(new, m)
    reasons = {e.rule: e.reason for e in report.explanations}
    assert "comes from Mul 'mul'" in reasons["fold-bn-after"]


@pytest.mark.parametrize("case", ["training_mode", "weight_input", "extra_output"])
def test_other_refusals_say_why(rng, case):
    m = conv_bn(rng)
    g = m.graph
    bn = g.node[1]
    if case == "training_mode":
        m.opset_import[0].version = 15
        bn.attribute.append(h.make_attribute("training_mode", 1))
        bn.output.extend(["rm", "rv"])
        g.output.extend([h.make_tensor_value_info(n, TP.FLOAT, [6]) for n in ("rm", "rv")])
        want = "training_mode=1"
    elif case == "weight_input":
        w = next(i for i in g.initializer if i.name == "W")
        g.initializer.remove(w)
        g.input.append(h.make_tensor_value_info("W", TP.FLOAT, [6, 4, 3, 3]))
        want = "Conv 'layer''s weight 'W' is a graph input, not a constant"
    else:
        m.opset_import[0].version = 15
        bn.output.extend(["rm"])
        g.output.extend([h.make_tensor_value_info("rm", TP.FLOAT, [6])])
        want = "outputs (training form)"
    match = FoldBNAfter().match(*_ctx_node(m, "bn"))
    assert isinstance(match, NoMatch) and want in match.reason, match


def _ctx_node(model, name):
    graph, ctx = import_graph(model)
    return ctx, next(n for n in graph.nodes if n.name == name)


def test_before_refusals_say_why(rng):
    m = bn_gemm(rng)
    m.graph.node[1].attribute.append(h.make_attribute("transA", 1))
    # transA=1 with A (3, 4) needs B (3, N): only the match is asked, the graph is not run
    r = FoldBNBefore().match(*_ctx_node(m, "bn"))
    assert isinstance(r, NoMatch) and "transA=1" in r.reason


# ---- graphs from torch's exporters ---------------------------------------------------------------

def _torch_cases():
    g = torch.Generator().manual_seed(0)

    def bn(c, d=2):
        m = getattr(torch.nn, f"BatchNorm{d}d")(c)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(generator=g)
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        return m
    return {
        "conv_bn": (torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), bn(6)), (2, 3, 8, 8)),
        # no bias: the unoptimized dynamo graph computes a zero bias (Shape -> Expand -> CastLike)
        "conv_nobias_bn": (torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, bias=False), bn(6)), (2, 3, 8, 8)),
        "convT_bn": (torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), bn(6)), (2, 4, 5, 5)),
        "linear_bn1d": (torch.nn.Sequential(torch.nn.Linear(5, 7), bn(7, 1)), (2, 5)),
        "bn_conv": (torch.nn.Sequential(bn(3), torch.nn.Conv2d(3, 6, 3)), (2, 3, 8, 8)),
    }


TORCH_CASES = _torch_cases()


def _torch_export(model, x, dynamo):
    """The exporter's graph with the BN still in it: the dynamo path without onnxscript's
    optimizer (which already folds BN), the TorchScript path without constant folding."""
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, (x,), dynamo=True, optimize=False).model_proto
        torch.onnx.export(model, (x,), f, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_torch_exported_graphs_are_folded(name, dynamo):
    model, shape = TORCH_CASES[name]
    model = model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    proto = _torch_export(model, x, dynamo)
    assert "BatchNormalization" in _ops(proto)
    new, report = rewrite(proto)
    assert report.ok, report.format()
    assert "BatchNormalization" not in _ops(new), report.format()
    assert sum(report.counts().values()) == 1
    xs = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.double()(xs.double()).numpy()
    model.float()
    got = _run_ort(new, {proto.graph.input[0].name: xs.numpy()})[0]
    print(f"{name} {'dynamo' if dynamo else 'torchscript'}: max abs err vs torch float64 "
          f"{np.abs(got - expected).max():.3g} (max |y| {np.abs(expected).max():.3g})")
    assert_normwise(got, expected, 1e-5, 1e-6)


def test_resnet18_bn_torchscript_export_is_folded():
    """normexport.graphs' ResNet-18 layout with BN (conv without bias everywhere), exported by
    torch's TorchScript path without constant folding: all 20 BNs fold (after their convs)."""
    from normexport.graphs import GRAPHS
    model, (x,) = GRAPHS["resnet18_bn"]()
    proto = _torch_export(model.eval(), x, dynamo=False)
    assert _ops(proto).count("BatchNormalization") == 20
    new, report = rewrite(proto)
    assert report.ok and report.counts()["fold-bn-after"] == 20 and "BatchNormalization" not in _ops(new)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    model.float()
    got = _run_ort(new, {proto.graph.input[0].name: x.numpy()})[0]
    assert_normwise(got, expected, 1e-5, 1e-6)


def test_shared_weight_is_copied_not_changed(rng):
    """Two convs share one weight initializer; only the one with a BN after it folds, into a
    new weight: the other conv still reads the original values."""
    m = conv_bn(rng)
    g = m.graph
    g.node.append(h.make_node("Conv", ["x", "W"], ["other"], name="other_conv", pads=[1, 1, 1, 1]))
    g.output.append(h.make_tensor_value_info("other", TP.FLOAT, [None] * 4))
    new, report = rewrite(m)
    assert report.ok and report.counts()["fold-bn-after"] == 1
    other = next(n for n in new.graph.node if n.name == "other_conv")
    assert other.input[1] == "W"
    w = {i.name: nh.to_array(i) for i in new.graph.initializer}
    np.testing.assert_array_equal(w["W"], next(nh.to_array(i) for i in m.graph.initializer if i.name == "W"))
    feeds = passes.verify.make_feeds(m)
    ref = np_eval(m, feeds)
    for got, exp in zip(_run_ort(new, feeds), ref):
        assert_normwise(got, exp, 2e-5)


def test_constant_subgraphs_are_evaluated_in_the_models_opset(rng):
    """A conv weight reached through Unsqueeze (opset 11: axes is an attribute) of an
    initializer and a bias through Mul(constant, constant) fold; a bias computed from the
    graph input (Shape(x) -> ...) is not a constant and is named as such."""
    from normexport.passes.fold_bn import _const
    w = rng.standard_normal((6, 4, 3)).astype(np.float32)
    inits = [nh.from_array(w, "W3"), nh.from_array(np.full(6, 0.5, np.float32), "half"),
             nh.from_array(np.arange(6, dtype=np.float32), "ramp")] + _bn_inits(rng, "bn_", 6, np.float32)
    nodes = [h.make_node("Unsqueeze", ["W3"], ["W"], axes=[3]),
             h.make_node("Mul", ["half", "ramp"], ["b"]),
             h.make_node("Conv", ["x", "W", "b"], ["h"], name="layer"), _bn("h", "y")]
    m = _model(nodes, inits, ["N", 4, 5, 5], None, opset=11)
    graph, ctx = import_graph(m)
    np.testing.assert_array_equal(_const(ctx, graph.tensors()["W"]), w[..., None])
    new, _ = check_fold(m, "fold-bn-after")
    assert _ops(new) == ["Conv"]
    # a "bias" that depends on the input's shape
    nodes = [h.make_node("Shape", ["x"], ["sx"]),
             h.make_node("Gather", ["sx", "one"], ["c"], axis=0),
             h.make_node("Cast", ["c"], ["cf"], to=TP.FLOAT),
             h.make_node("Mul", ["ramp", "cf"], ["b"]),
             h.make_node("Conv", ["x", "W4", "b"], ["h"], name="layer"), _bn("h", "y")]
    inits = [nh.from_array(w[..., None], "W4"), nh.from_array(np.array(1, np.int64), "one"),
             nh.from_array(np.arange(6, dtype=np.float32), "ramp")] + _bn_inits(rng, "bn_", 6, np.float32)
    m2 = _model(nodes, inits, ["N", 4, 5, 5], None, opset=17)
    r = FoldBNAfter().match(*_ctx_node(m2, "bn"))
    assert isinstance(r, NoMatch) and "bias 'b' is computed by Mul" in r.reason, r


@pytest.mark.parametrize("bias_first,c_shape", [(False, (5,)), (True, (1, 5)), (False, ())])
def test_bn_after_matmul_plus_bias(rng, bias_first, c_shape):
    """A dense layer written as MatMul + Add(constant bias) (tf2onnx, N-d Linear exports)."""
    inits = [nh.from_array(rng.standard_normal((4, 5)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal(c_shape).astype(np.float32), "c")]
    add = h.make_node("Add", ["c", "mm"] if bias_first else ["mm", "c"], ["h"], name="add")
    m = _model([h.make_node("MatMul", ["x", "W"], ["mm"], name="layer"), add, _bn("h", "y")],
               inits + _bn_inits(rng, "bn_", 5, np.float32), ["N", 4], None)
    new, _ = check_fold(m, "fold-bn-after")
    assert _ops(new) == ["Gemm"] and new.graph.node[0].name == "layer"


def test_bn_after_matmul_plus_bias_refusals(rng):
    inits = [nh.from_array(rng.standard_normal((4, 5)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal(5).astype(np.float32), "c")]
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"], name="layer"), h.make_node("Add", ["mm", "c"], ["h"], name="add"),
             _bn("h", "y"), h.make_node("Relu", ["mm"], ["r"], name="relu")]
    g_out = [h.make_tensor_value_info("r", TP.FLOAT, [None, None])]
    m = _model(nodes, inits + _bn_inits(rng, "bn_", 5, np.float32), ["N", 4], None)
    m.graph.output.extend(g_out)
    r = FoldBNAfter().match(*_ctx_node(m, "bn"))
    assert isinstance(r, NoMatch) and "also used by 'relu'" in r.reason, r
    m3 = _model(nodes[:3], inits + _bn_inits(rng, "bn_", 3, np.float32), [2, 3, 4], None)
    r = FoldBNAfter().match(*_ctx_node(m3, "bn"))
    assert isinstance(r, NoMatch) and "rank 3" in r.reason, r
