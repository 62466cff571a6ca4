"""Fusion rules (normexport/passes/fuse_*.py) on graphs normexport did not write.

- plain torch modules (tests/_plain_norms.py: nn.GroupNorm, FRN / AdaIN / SPADE written as
  their papers' code writes them) exported by both torch exporters (torch.export path
  ``dynamo=True`` and TorchScript ``dynamo=False``) at opsets 17 / 18 / 20 (and 14): fused into
  one normexport node where the model's opset is >= MIN_OPSET, the lowest opset the function
  bodies are written for (refused with the reason below), and the
  fused model run in ORT with the op library (kernel) and without it (function body), both
  against an independent float64 numpy reference of the module's math;
- the ONNX backend node tests of GroupNormalization (generated from the installed onnx
  package's case definitions) through the passes: still their expected outputs; the same
  node at opset 18 (per-group scale) converted exactly;
- hand-built graphs: variants users write (ReduceMean GN form) and the no-match cases, each
  with its reason checked and the graph left as it was.
Inputs are scaled so that epsilon matters (variances near eps): a wrong epsilon conversion
(AdaIN's unbiased variance, FRN's |eps|) fails the parity checks.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from _plain_norms import FRN, SPADE, AdaIN
from onnx import TensorProto, helper, numpy_helper

import normexport
from normexport.export import attach_functions
from normexport.ops._onnx import MIN_OPSET
from normexport.passes import RULES
from normexport.passes.base import run_rules
from normexport.reference._conv import conv as ref_conv

FUSE_RULES = [r for name, r in RULES.items() if name.startswith("fuse-")]
NORMWISE = 1e-5          # float32: ||y - ref|| / ||ref||
ERRORS: dict[str, tuple[float, float]] = {}


# ---- helpers ---------------------------------------------------------------------------------

def export(module, args, dynamo: bool, opset: int) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(module, args, dynamo=True, opset_version=opset, verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(module, args, f, dynamo=False, opset_version=opset)
        return onnx.load_from_string(f.getvalue())


def opset_of(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def fuse(model):
    out, run = run_rules(model, FUSE_RULES, explain=True)
    if run.applied:
        attach_functions(out)
        onnx.checker.check_model(out, full_check=True)
    return out, run


def ops(model) -> Counter:
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                   for n in model.graph.node)


def run_both(model, feeds) -> dict[str, np.ndarray]:
    return {f"library={lib}": normexport.session(model, use_library=lib).run(None, feeds)[0]
            for lib in (True, False)}


def assert_close(y, ref, label: str, normwise: float = NORMWISE):
    y64 = np.asarray(y, np.float64)
    err = float(np.abs(y64 - ref).max())
    nerr = float(np.linalg.norm(y64 - ref) / max(np.linalg.norm(ref), 1e-30))
    ERRORS[label] = (err, nerr)
    print(f"ERR {label}: max abs {err:.3g}, normwise {nerr:.3g}")
    assert np.isfinite(y64).all(), label
    assert nerr <= normwise, f"{label}: normwise error {nerr:.3g} > {normwise:g} (max abs {err:.3g})"


def assert_untouched(model, out, run):
    assert not run.applied, run.applied
    assert sorted((n.op_type, n.name) for n in out.graph.node) == sorted((n.op_type, n.name) for n in model.graph.node)


def reasons(run, rule=None) -> list[str]:
    return [e.reason for e in run.explanations if rule is None or e.rule == rule]


# ---- float64 references of the plain modules (numpy, from the formulas) -----------------------

def np_group_norm(x, g, w, b, eps):
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    r = x.reshape(n, g, -1)
    mu = r.mean(2, keepdims=True)
    var = ((r - mu) ** 2).mean(2, keepdims=True)
    y = ((r - mu) / np.sqrt(var + eps)).reshape(x.shape)
    cs = (c,) + (1,) * (x.ndim - 2)
    return y * np.asarray(w, np.float64).reshape(cs) + np.asarray(b, np.float64).reshape(cs)


def np_frn(x, gamma, beta, tau, eps):
    x = np.asarray(x, np.float64)
    nu2 = (x * x).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    y = gamma * x / np.sqrt(nu2 + abs(eps)) + beta
    return np.maximum(y, tau) if tau is not None else y


def np_adain_naoto(c, s, eps=1e-5):
    """calc_mean_std: unbiased variance (ddof=1) + eps, sqrt."""
    def ms(t):
        t = np.asarray(t, np.float64)
        f = t.reshape(t.shape[0], t.shape[1], -1)
        return f.mean(2)[..., None, None], np.sqrt(f.var(2, ddof=1) + eps)[..., None, None]
    mc, sc = ms(c)
    mst, sst = ms(s)
    return (np.asarray(c, np.float64) - mc) / sc * sst + mst


def np_nearest(x, size):
    x = np.asarray(x, np.float64)
    ih, iw = x.shape[2:]
    hi = np.floor(np.arange(size[0]) * (ih / size[0])).astype(int)
    wi = np.floor(np.arange(size[1]) * (iw / size[1])).astype(int)
    return x[:, :, hi][:, :, :, wi]


def np_spade(m: SPADE, x, seg):
    p = lambda t: t.detach().double().numpy()
    x = np.asarray(x, np.float64)
    a = np.maximum(ref_conv(np_nearest(seg, x.shape[2:]), p(m.mlp_shared[0].weight), p(m.mlp_shared[0].bias), padding=1), 0)
    gamma = ref_conv(a, p(m.mlp_gamma.weight), p(m.mlp_gamma.bias), padding=1)
    beta = ref_conv(a, p(m.mlp_beta.weight), p(m.mlp_beta.bias), padding=1)
    norm = m.param_free_norm
    if isinstance(norm, torch.nn.BatchNorm2d):
        rm, rv = p(norm.running_mean)[None, :, None, None], p(norm.running_var)[None, :, None, None]
        xh = (x - rm) / np.sqrt(rv + norm.eps)
    else:
        mu = x.mean((2, 3), keepdims=True)
        xh = (x - mu) / np.sqrt(x.var((2, 3), keepdims=True) + norm.eps)
    return xh * (1 + gamma) + beta


# ---- the plain modules and their inputs ------------------------------------------------------

def _channel_scales(c, lo=1e-3):
    return torch.logspace(np.log10(lo), 0, c).reshape(1, c, 1, 1)


def make_case(kind: str):
    """(module, args, reference(args) -> float64, expected normexport op type)."""
    torch.manual_seed(7)
    if kind in ("gn", "gn_noaffine", "gn_g2"):
        g, c = (2, 8) if kind == "gn_g2" else (4, 8)
        m = torch.nn.GroupNorm(g, c, affine=kind != "gn_noaffine")
        if m.weight is not None:
            with torch.no_grad():
                m.weight.normal_()
                m.bias.normal_()
        x = torch.randn(2, c, 5, 6) * _channel_scales(c) + 0.3
        w = m.weight.detach().double().numpy() if m.weight is not None else np.ones(c)
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(c)
        return m, (x,), lambda x: np_group_norm(x, g, w, b, m.eps), "GroupNorm"
    if kind in ("frn", "frn_notlu"):
        c = 6
        m = FRN(c, eps=-1e-4, learnable_eps=True, tlu=kind == "frn")   # learned eps < 0: |eps| matters
        with torch.no_grad():
            for prm in (m.gamma, m.beta) + ((m.tau,) if m.tau is not None else ()):
                prm.normal_()
        x = torch.randn(2, c, 5, 6) * _channel_scales(c, 3e-3)
        p = lambda t: t.detach().double().numpy() if t is not None else None
        return m, (x,), lambda x: np_frn(x, p(m.gamma), p(m.beta), p(m.tau), float(m.eps)), "FilterResponseNorm"
    if kind == "adain":
        m = AdaIN()
        # content variance ~ eps and S = 12: the epsilon conversion eps (S-1)/S shows (~2 %)
        c = torch.randn(2, 6, 3, 4) * 3e-3 + 0.5
        s = torch.randn(2, 6, 3, 4) * _channel_scales(6, 0.1) * 2
        return m, (c, s), lambda c, s: np_adain_naoto(c, s), "AdaIN"
    if kind in ("spade_instance", "spade_batch"):
        m = SPADE(6, 3, kind.split("_")[1], nhidden=8)
        if kind == "spade_batch":
            with torch.no_grad():
                m.param_free_norm.running_mean.normal_()
                m.param_free_norm.running_var.uniform_(1e-4, 2.0)
        x = torch.randn(2, 6, 5, 6) * _channel_scales(6, 3e-3)
        seg = torch.rand(2, 3, 10, 12)
        return m.eval(), (x, seg), lambda x, seg: np_spade(m, x, seg), "SPADE"
    raise KeyError(kind)


KINDS = ["gn", "gn_noaffine", "gn_g2", "frn", "frn_notlu", "adain", "spade_instance", "spade_batch"]
LEFT_OVER = {  # ops that must be gone after the fusion (per op type of the pattern)
    "GroupNorm": ("InstanceNormalization", "ReduceMean", "Sqrt"),
    "FilterResponseNorm": ("ReduceMean", "Sqrt", "Pow", "Max", "Reciprocal"),
    "AdaIN": ("ReduceMean", "Sqrt", "Expand"),
    "SPADE": ("InstanceNormalization", "BatchNormalization", "Mul"),
}


@pytest.mark.parametrize("opset", [17, 18, 20])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_export_fused(library, kind, dynamo, opset):
    module, args, reference, op_type = make_case(kind)
    module.eval()
    model = export(module, args, dynamo, opset)
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, args)}
    out, run = fuse(model)
    if opset_of(model) < MIN_OPSET:
        assert_untouched(model, out, run)
        assert any(f"model opset {opset_of(model)} < {MIN_OPSET}" in r for r in reasons(run)), reasons(run)
        return
    counts = ops(out)
    assert counts[f"normexport::{op_type}"] == 1, (counts, reasons(run))
    assert len(run.applied) == 1
    for gone in LEFT_OVER[op_type]:
        assert counts[gone] == 0, (gone, counts)
    node = next(n for n in out.graph.node if n.domain == "normexport")
    assert node.name.endswith(f"/{op_type}")
    assert list(node.output) == [model.graph.output[0].name]
    assert [f.name for f in out.functions] == [op_type]
    ref = reference(*[a.numpy() for a in args])
    original = normexport.session(model, use_library=False).run(None, feeds)[0]
    assert_close(original, ref, f"{kind} {'dynamo' if dynamo else 'torchscript'} opset {opset} unfused")
    for path, y in run_both(out, feeds).items():
        assert_close(y, ref, f"{kind} {'dynamo' if dynamo else 'torchscript'} opset {opset} {path}")


def export_dynamic_batch(module, args, dynamo: bool) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            return torch.onnx.export(module, args, dynamo=True, opset_version=18, verbose=False,
                                     dynamic_shapes=tuple({0: batch} for _ in args)).model_proto
        f = io.BytesIO()
        names = [f"in{i}" for i in range(len(args))]
        torch.onnx.export(module, args, f, dynamo=False, opset_version=18, input_names=names,
                          dynamic_axes={n: {0: "N"} for n in names})
        return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", ["gn", "frn", "adain", "spade_batch"])
def test_torch_export_dynamic_batch_fused(library, kind, dynamo):
    """Exported with a symbolic batch (legacy: shapes computed from Shape(x) at run time),
    fused, run at batch 3 (not the traced 2)."""
    module, args, reference, op_type = make_case(kind)
    model = export_dynamic_batch(module.eval(), args, dynamo)
    out, run = fuse(model)
    assert ops(out)[f"normexport::{op_type}"] == 1, reasons(run)
    torch.manual_seed(11)
    args3 = tuple(torch.cat([a, a[:1] * 0.5 + 0.1]) for a in args)
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, args3)}
    ref = reference(*[a.numpy() for a in args3])
    for path, y in run_both(out, feeds).items():
        assert y.shape[0] == 3
        assert_close(y, ref, f"{kind} {'dynamo' if dynamo else 'torchscript'} dynamic batch {path}")


def test_kernel_path_served(library):
    """With the library the fused node runs on the native kernel, without it on the body."""
    module, args, _, _ = make_case("gn")
    out, _ = fuse(export(module.eval(), args, False, 18))
    feeds = {out.graph.input[0].name: args[0].numpy()}
    with_lib = normexport.served_by(out, feeds, use_library=True)
    without = normexport.served_by(out, feeds, use_library=False)
    assert any(op == "GroupNorm" for op, _ in with_lib), with_lib
    assert not any(op == "GroupNorm" for op, _ in without), without


# ---- AdaIN: what cannot be converted ---------------------------------------------------------

def test_adain_unbiased_different_sizes_refused():
    """naoto0804's unbiased variance with content and style of different spatial sizes: the
    S/(S-1) factors do not cancel, normexport::AdaIN (biased) cannot express it."""
    c, s = torch.randn(2, 4, 3, 4), torch.randn(2, 4, 5, 5)
    model = export(AdaIN().eval(), (c, s), False, 18)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("unbiased variances over different spatial sizes (content 12, style 25)" in r
               for r in reasons(run, "fuse-adain")), reasons(run, "fuse-adain")


class _AdaINBiased(torch.nn.Module):
    """AdaIN with the paper's biased variance (var(unbiased=False)), spatial sizes differing."""

    def forward(self, c, s):
        def ms(t):
            f = t.view(t.shape[0], t.shape[1], -1)
            return f.mean(2).view(*t.shape[:2], 1, 1), (f.var(2, unbiased=False) + 1e-5).sqrt().view(*t.shape[:2], 1, 1)
        mc, sc = ms(c)
        mst, sst = ms(s)
        return (c - mc.expand(c.size())) / sc.expand(c.size()) * sst.expand(c.size()) + mst.expand(c.size())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_adain_biased_different_sizes_fused(library, dynamo):
    torch.manual_seed(3)
    c = torch.randn(2, 4, 3, 4) * _channel_scales(4, 3e-3)
    s = torch.randn(2, 4, 5, 5) * _channel_scales(4, 2e-3) + 2
    model = export(_AdaINBiased().eval(), (c, s), dynamo, 18)
    out, run = fuse(model)
    assert ops(out)["normexport::AdaIN"] == 1, reasons(run, "fuse-adain")
    node = next(n for n in out.graph.node if n.domain == "normexport")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "epsilon")) == pytest.approx(1e-5)
    c64, s64 = c.double().numpy(), s.double().numpy()
    mc, vc = c64.mean((2, 3), keepdims=True), c64.var((2, 3), keepdims=True)
    ms_, vs = s64.mean((2, 3), keepdims=True), s64.var((2, 3), keepdims=True)
    ref = (c64 - mc) / np.sqrt(vc + 1e-5) * np.sqrt(vs + 1e-5) + ms_
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, (c, s))}
    for path, y in run_both(out, feeds).items():
        assert_close(y, ref, f"adain biased S 12 vs 25 {'dynamo' if dynamo else 'torchscript'} {path}")


def test_spade_instance_norm_with_affine_refused():
    m = SPADE(4, 3, "instance", nhidden=8)
    m.param_free_norm = torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        m.param_free_norm.weight.normal_()
    model = export(m.eval(), (torch.randn(2, 4, 5, 6), torch.rand(2, 3, 5, 6)), False, 18)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("has an affine (scale not all 1)" in r for r in reasons(run, "fuse-spade")), reasons(run, "fuse-spade")


# ---- ONNX backend node tests: GroupNormalization ---------------------------------------------

@functools.lru_cache(maxsize=1)
def _backend_cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases("GroupNormalization")}


@pytest.mark.parametrize("name", ["test_group_normalization_example", "test_group_normalization_epsilon",
                                  "test_group_normalization_example_expanded",
                                  "test_group_normalization_epsilon_expanded"])
def test_onnx_backend_group_normalization(library, name):
    case = _backend_cases()[name]
    model = case.model
    (inputs, expected), = case.data_sets
    feeds = {i.name: v for i, v in zip(model.graph.input, inputs)}
    out, run = fuse(model)
    if name.endswith("_expanded"):
        # the function-expanded body (E[x^2] - E[x]^2 variance, scale applied on an (N, C, -1)
        # view of graph-input parameters) is no pattern of ours: unchanged in meaning
        assert_untouched(model, out, run)
        got = normexport.session(out, use_library=False).run(None, feeds)[0]
        np.testing.assert_allclose(got, expected[0], rtol=case.rtol, atol=case.atol)
        return
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    ref = np_group_norm(inputs[0], {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}["num_groups"],
                        inputs[1], inputs[2],
                        next((helper.get_attribute_value(a) for a in model.graph.node[0].attribute if a.name == "epsilon"), 1e-5))
    for path, y in run_both(out, feeds).items():
        np.testing.assert_allclose(y, expected[0], rtol=case.rtol, atol=case.atol, err_msg=path)
        assert_close(y, ref, f"{name} {path}")


def _gn_node_model(opset, scale, bias, c=4, g=2, eps=1e-2, const_params=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, c, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, c, 2, 2])
    inits, ins = [], [x]
    for name, v in (("scale", scale), ("bias", bias)):
        if const_params:
            inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name))
        else:
            ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [len(v)]))
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], name="gn", num_groups=g, epsilon=eps)
    graph = helper.make_graph([node], "g", ins, [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_group_normalization_18_per_group_scale(library):
    """GroupNormalization-18: scale / bias per group, repeated per channel (C=4, G=2: [a, a, b,
    b], which a tile [a, b, a, b] would get wrong)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    scale, bias = np.array([0.5, -2.0], np.float32), np.array([1.0, -3.0], np.float32)
    model = _gn_node_model(18, scale, bias)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    ref = np_group_norm(x, 2, np.repeat(scale, 2), np.repeat(bias, 2), 1e-2)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, ref, f"GroupNormalization-18 per-group {path}")
    # ONNX's own reference evaluator agrees on the opset-18 semantics
    from onnx.reference import ReferenceEvaluator
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-6)


def test_group_normalization_18_scale_input_refused():
    model = _gn_node_model(18, [1, 1], [0, 0], const_params=False)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("GroupNormalization-18's per-group scale 'scale' is not a constant" in r for r in reasons(run))


def test_group_normalization_21_constant_params(library):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    scale, bias = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    out, _run = fuse(_gn_node_model(21, scale, bias))
    assert ops(out) == Counter({"normexport::GroupNorm": 1})
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, np_group_norm(x, 2, scale, bias, 1e-2), f"GroupNormalization-21 constants {path}")


# ---- hand-built graphs -------------------------------------------------------------------------

def _f32(name, v):
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _i64(name, v):
    return numpy_helper.from_array(np.asarray(v, np.int64), name)


def _model(nodes, inputs, outputs, inits, opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def gn_reducemean_model(c=8, groups=4, shape=(2, 8, 5, 6), square="pow", inverse="div", axes=(2,),
                        w_shape=None, extra_output=None, opset=18, eps=1e-5):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div GroupNorm written by hand."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal(w_shape or (c, 1, 1))
    b = rng.standard_normal((c, 1, 1))
    ax = [] if opset < 18 else ["axes"]
    ra = {"axes": list(axes)} if opset < 18 else {}
    nodes = [
        helper.make_node("Reshape", ["x", "grp"], ["r"], name="reshape_in"),
        helper.make_node("ReduceMean", ["r", *ax], ["mu"], name="mean", keepdims=1, **ra),
        helper.make_node("Sub", ["r", "mu"], ["d"], name="sub"),
        (helper.make_node("Pow", ["d", "two"], ["d2"], name="square") if square == "pow"
         else helper.make_node("Mul", ["d", "d"], ["d2"], name="square")),
        helper.make_node("ReduceMean", ["d2", *ax], ["var"], name="var", keepdims=1, **ra),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
    ]
    if inverse == "div":
        nodes.append(helper.make_node("Div", ["d", "sd"], ["h"], name="div"))
    else:
        nodes += [helper.make_node("Reciprocal", ["sd"], ["isd"], name="recip"),
                  helper.make_node("Mul", ["d", "isd"], ["h"], name="mul_isd")]
    nodes += [helper.make_node("Shape", ["x"], ["xs"], name="shape"),
              helper.make_node("Reshape", ["h", "xs"], ["hx"], name="reshape_out"),
              helper.make_node("Mul", ["hx", "w"], ["hw"], name="affine_mul"),
              helper.make_node("Add", ["hw", "b"], ["y"], name="affine_add")]
    inits = [_i64("grp", [0, groups, -1]), _f32("two", 2.0), _f32("eps", eps), _f32("w", w), _f32("b", b)]
    if opset >= 18:
        inits.append(_i64("axes", list(axes)))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))]
    if extra_output:
        outs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, [shape[0], groups, 1]))
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], outs, inits, opset)
    return m, w, b


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal"])
def test_gn_reducemean_form_fused(library, square, inverse):
    model, w, b = gn_reducemean_model(square=square, inverse=inverse)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    assert run.applied[0].rule == "fuse-groupnorm-reducemean"
    x = (np.random.default_rng(2).standard_normal((2, 8, 5, 6)) * _channel_scales(8).numpy()).astype(np.float32)
    ref = np_group_norm(x, 4, w.reshape(-1), b.reshape(-1), 1e-5)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, ref, f"gn reducemean {square}/{inverse} {path}")


def test_gn_reducemean_wrong_axes_refused():
    # statistics over the group axis instead of within the group: a different normalization
    model, _, _ = gn_reducemean_model(axes=(1,))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("reduce axes [1] of the grouped tensor, not the group axes [2]" in r for r in reasons(run))


def test_gn_reducemean_mul_not_per_channel_refused():
    model, _, _ = gn_reducemean_model(w_shape=(1, 1, 5, 6))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("affine_mul after the GroupNorm is by a constant of shape (1, 1, 5, 6): not a per-channel affine" in r
               for r in reasons(run)), reasons(run)


def test_gn_reducemean_intermediate_used_twice_refused():
    model, _, _ = gn_reducemean_model(extra_output="var")
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("'var' is a graph output" in r for r in reasons(run)), reasons(run)


def test_gn_reducemean_old_opset_refused():
    """Below the lowest opset of the function bodies the node could not carry its fallback."""
    model, _, _ = gn_reducemean_model(opset=MIN_OPSET - 1)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any(f"model opset {MIN_OPSET - 1} < {MIN_OPSET}" in r for r in reasons(run))


def test_gn_reducemean_opset17_fused(library):
    """Opset 17 (ReduceMean axes as an attribute): fused, the function body for opset 17."""
    model, w, b = gn_reducemean_model(opset=17)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    x = np.random.default_rng(2).standard_normal((2, 8, 5, 6)).astype(np.float32)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, np_group_norm(x, 4, w.reshape(-1), b.reshape(-1), 1e-5), f"gn reducemean opset 17 {path}")


@pytest.mark.parametrize("kind", ["gn", "frn", "spade_batch"])
def test_torch_export_opset14_refused(kind):
    module, args, _, _ = make_case(kind)
    model = export(module.eval(), args, False, 14)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any(f"model opset 14 < {MIN_OPSET}" in r for r in reasons(run)), reasons(run)


def gn_instancenorm_model(c=8, groups=4, in_scale_input=False, shape=(2, 8, 5, 6)):
    s = np.arange(1, groups + 1, dtype=np.float32) / 2
    nodes = [helper.make_node("Reshape", ["x", "grp"], ["r"], name="reshape_in"),
             helper.make_node("InstanceNormalization", ["r", "s", "sb"], ["i"], name="inorm", epsilon=1e-3),
             helper.make_node("Reshape", ["i", "xs"], ["y"], name="reshape_out")]
    inits = [_i64("grp", [0, groups, -1]), _i64("xs", list(shape)), _f32("sb", np.full(groups, 0.25))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    if in_scale_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [groups]))
    else:
        inits.append(_f32("s", s))
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits), s


def test_gn_instancenorm_group_affine_converted(library):
    """The InstanceNormalization's own per-group scale / bias become per-channel (repeat)."""
    model, s = gn_instancenorm_model()
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    x = np.random.default_rng(3).standard_normal((2, 8, 5, 6)).astype(np.float32)
    ref = np_group_norm(x, 4, np.repeat(s, 2), np.full(8, 0.25), 1e-3)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, ref, f"gn instancenorm per-group affine {path}")


def test_gn_groups_not_dividing_channels_refused():
    """Reshape of 8 channels x 30 values into 3 rows of 80: valid ONNX, rows cross channel
    boundaries; not a GroupNorm."""
    model, _ = gn_instancenorm_model(groups=3)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("reshapes 8 channels into 3 groups: 3 does not divide 8" in r for r in reasons(run)), reasons(run)


def test_gn_instancenorm_scale_graph_input_refused():
    model, _ = gn_instancenorm_model(in_scale_input=True)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("the scale of inorm ('s') is not a constant" in r for r in reasons(run)), reasons(run)


def frn_model(gamma_shape=(1, 6, 1, 1), axes=(2, 3), nu2_twice=False, gamma_input=False, tau_shape=(1, 6, 1, 1),
              square="pow", inverse="reciprocal"):
    shape = [2, 6, 5, 6]
    rng = np.random.default_rng(9)
    nodes = [(helper.make_node("Pow", ["x", "two"], ["x2"], name="pow") if square == "pow"
              else helper.make_node("Mul", ["x", "x"], ["x2"], name="pow")),
             helper.make_node("ReduceMean", ["x2", "axes"], ["nu2"], name="nu2", keepdims=1),
             helper.make_node("Add", ["nu2", "eps"], ["ne"], name="add_eps"),
             helper.make_node("Sqrt", ["ne"], ["sd"], name="sqrt")]
    if inverse == "reciprocal":
        nodes += [helper.make_node("Reciprocal", ["sd"], ["isd"], name="rsqrt"),
                  helper.make_node("Mul", ["x", "isd"], ["h"], name="norm")]
    else:
        nodes.append(helper.make_node("Div", ["x", "sd"], ["h"], name="norm"))
    nodes += [helper.make_node("Mul", ["gamma", "h"], ["hg"], name="gamma_mul"),
             helper.make_node("Add", ["hg", "beta"], ["hb"], name="beta_add"),
             helper.make_node("Max", ["hb", "tau"], ["y"], name="tlu")]
    inits = [_f32("two", 2.0), _i64("axes", list(axes)), _f32("eps", 1e-6), _f32("beta", rng.standard_normal((1, 6, 1, 1))),
             _f32("tau", rng.standard_normal(tau_shape))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if gamma_input:
        inputs.append(helper.make_tensor_value_info("gamma", TensorProto.FLOAT, list(gamma_shape)))
    else:
        inits.append(_f32("gamma", rng.standard_normal(gamma_shape)))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if nu2_twice:
        nodes.append(helper.make_node("Identity", ["nu2"], ["nu2_copy"], name="nu2_user"))
        outs.append(helper.make_tensor_value_info("nu2_copy", TensorProto.FLOAT, [2, 6, 1, 1]))
    return _model(nodes, inputs, outs, inits)


@pytest.mark.parametrize("square,inverse", [("pow", "reciprocal"), ("mul", "div")])
def test_frn_hand_written_fused(library, square, inverse):
    model = frn_model(square=square, inverse=inverse)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::FilterResponseNorm": 1}), reasons(run)
    x = (np.random.default_rng(1).standard_normal((2, 6, 5, 6)) * _channel_scales(6, 1e-3).numpy()).astype(np.float32)
    p = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    ref = np_frn(x, p["gamma"], p["beta"], p["tau"], 1e-6)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, ref, f"frn hand-written {square}/{inverse} {path}")


def test_frn_mul_not_per_channel_refused():
    model = frn_model(gamma_shape=(1, 1, 5, 6))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("gamma_mul after the filter response normalization is by a constant of shape (1, 1, 5, 6): "
               "not a per-channel affine" in r for r in reasons(run, "fuse-frn")), reasons(run, "fuse-frn")


def test_frn_tau_full_tensor_refused():
    model = frn_model(tau_shape=(2, 6, 5, 6))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("not a per-channel threshold" in r for r in reasons(run, "fuse-frn"))


def test_frn_intermediate_used_twice_refused():
    model = frn_model(nu2_twice=True)
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("'nu2' is also used by 'nu2_user'" in r for r in reasons(run, "fuse-frn")), reasons(run, "fuse-frn")


def test_frn_wrong_axes_refused():
    model = frn_model(axes=(3,))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("nu2 averages over axes [3], not all spatial axes [2, 3]" in r for r in reasons(run, "fuse-frn"))


def test_frn_gamma_graph_input_stays_outside(library):
    """gamma as a graph input is no constant affine: the normalization is fused, the Mul by
    gamma (and what follows) stays; same numbers."""
    model = frn_model(gamma_input=True)
    out, _run = fuse(model)
    assert ops(out)["normexport::FilterResponseNorm"] == 1
    assert ops(out)["Mul"] == 1 and ops(out)["Max"] == 1
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((2, 6, 5, 6)).astype(np.float32) * 0.01,
             "gamma": rng.standard_normal((1, 6, 1, 1)).astype(np.float32)}
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    ref = np.maximum(np_frn(feeds["x"], feeds["gamma"].astype(np.float64), inits["beta"], None, 1e-6), inits["tau"])
    for path, y in run_both(out, feeds).items():
        assert_close(y[0] if isinstance(y, list) else y, ref, f"frn gamma input {path}")


def test_rules_have_docs_and_names():
    for r in FUSE_RULES:
        assert r.name and r.summary and r.anchors
        assert type(r).__module__.split(".")[-1].startswith("fuse_")
        assert len(__import__(type(r).__module__, fromlist=["x"]).__doc__) > 400


# ---- other ranks, float16, the driver ------------------------------------------------------------

@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("shape,groups", [((4, 6), 3), ((2, 6, 7), 2), ((2, 6, 3, 4, 5), 3)],
                         ids=["rank2", "rank3", "rank5"])
def test_groupnorm_other_ranks_fused(library, shape, groups, dynamo):
    torch.manual_seed(5)
    m = torch.nn.GroupNorm(groups, 6).eval()
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(*shape) * 0.01 + 1.0     # variance ~ eps
    model = export(m, (x,), dynamo, 18)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    ref = np_group_norm(x.numpy(), groups, m.weight.detach().double().numpy(), m.bias.detach().double().numpy(), m.eps)
    for path, y in run_both(out, {model.graph.input[0].name: x.numpy()}).items():
        assert_close(y, ref, f"gn rank {len(shape)} {'dynamo' if dynamo else 'torchscript'} {path}")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", ["gn", "frn"])
def test_float16_exports_fused(library, kind, dynamo):
    """A half model: the new per-channel constants are float16 like X; float16 tolerance."""
    module, args, _reference, op_type = make_case(kind)
    module = module.eval().half()
    args = tuple(a.half() for a in args)
    model = export(module, args, dynamo, 18)
    out, run = fuse(model)
    assert ops(out)[f"normexport::{op_type}"] == 1, reasons(run)
    consts = {i.name: i for i in out.graph.initializer}
    node = next(n for n in out.graph.node if n.domain == "normexport")
    assert all(consts[i].data_type == TensorProto.FLOAT16 for i in node.input[1:])
    if kind == "frn":     # the half parameters, exactly as the graph holds them
        ref = np_frn(args[0].numpy(), *(t.detach().double().numpy() for t in (module.gamma, module.beta, module.tau)),
                     float(module.eps.float()))
    else:
        ref = np_group_norm(args[0].numpy(), 4, module.weight.detach().double().numpy(),
                            module.bias.detach().double().numpy(), module.eps)
    feeds = {model.graph.input[0].name: args[0].numpy()}
    for path, y in run_both(out, feeds).items():
        assert y.dtype == np.float16
        assert_close(y, ref, f"{kind} float16 {'dynamo' if dynamo else 'torchscript'} {path}", normwise=2e-3)


def test_driver_rewrite_fuses_and_explains(library):
    """normexport.passes.rewrite (the driver behind `normexport fold`): all rules, verified
    against the original, reasons collected for the anchors that did not match."""
    from normexport.passes import rewrite
    module, args, _, _ = make_case("spade_batch")
    model = export(module, args, False, 18)
    _out, report = rewrite(model, explain=True)
    assert report.ok, report.error
    assert report.counts()["fuse-spade"] == 1
    assert report.nodes_after.get("normexport::SPADE") == 1 and "BatchNormalization" not in report.nodes_after
    assert report.verifications and all(report.verifications)
    assert any(e.rule == "fuse-adain" and "does not add a mean to a Mul" in e.reason for e in report.explanations)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_groupnorm_activation_fused(library, act, dynamo):
    """nn.GroupNorm followed by nn.ReLU / nn.SiLU: one GroupNorm node with activation 1 / 2."""
    module, args, reference, _ = make_case("gn")
    seq = torch.nn.Sequential(module, torch.nn.ReLU() if act == "relu" else torch.nn.SiLU()).eval()
    model = export(seq, args, dynamo, 18)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), (ops(out), reasons(run))
    node = next(n for n in out.graph.node if n.domain == "normexport")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "activation")) == (1 if act == "relu" else 2)
    y0 = reference(args[0].numpy())
    ref = np.maximum(y0, 0) if act == "relu" else y0 / (1 + np.exp(-y0))
    for path, y in run_both(out, {model.graph.input[0].name: args[0].numpy()}).items():
        assert_close(y, ref, f"gn+{act} {'dynamo' if dynamo else 'torchscript'} {path}")


def test_groupnorm_activation_shared_not_absorbed(library):
    """A ReLU whose input is also a graph output stays a ReLU (the node's output is kept)."""
    rng = np.random.default_rng(0)
    model = _gn_node_model(21, rng.standard_normal(4), rng.standard_normal(4))
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 4, 2, 2]))
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1, "Relu": 1})
    assert run.applied[0].nodes == ["gn"]
    relu_model = _gn_node_model(21, rng.standard_normal(4), rng.standard_normal(4))
    relu_model.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    relu_model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 4, 2, 2]))
    out, _run = fuse(relu_model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1})
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    inits = {i.name: numpy_helper.to_array(i) for i in relu_model.graph.initializer}
    ref = np.maximum(np_group_norm(x, 2, inits["scale"], inits["bias"], 1e-2), 0)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, ref, f"GroupNormalization-21 + Relu {path}")


class _AdaINAlpha(torch.nn.Module):
    """naoto0804 test.py style_transfer's blend: feat * alpha + content_f * (1 - alpha)."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def forward(self, c, s):
        from _plain_norms import adaptive_instance_normalization
        feat = adaptive_instance_normalization(c, s)
        return feat * self.alpha + c * (1 - self.alpha)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_adain_alpha_blend_fused(library, dynamo):
    _, args, reference, _ = make_case("adain")
    model = export(_AdaINAlpha(0.6).eval(), args, dynamo, 18)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::AdaIN": 1}), (ops(out), reasons(run))
    assert [a.rule for a in run.applied] == ["fuse-adain", "fuse-adain-alpha"]
    node = next(n for n in out.graph.node if n.domain == "normexport")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "alpha")) == pytest.approx(0.6)
    c = args[0].numpy().astype(np.float64)
    ref = 0.6 * reference(*[a.numpy() for a in args]) + 0.4 * c
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, args)}
    for path, y in run_both(out, feeds).items():
        assert_close(y, ref, f"adain alpha 0.6 {'dynamo' if dynamo else 'torchscript'} {path}")


def test_adain_alpha_weights_not_summing_to_one_refused():
    class Blend(torch.nn.Module):
        def forward(self, c, s):
            from _plain_norms import adaptive_instance_normalization
            return adaptive_instance_normalization(c, s) * 0.6 + c * 0.5
    _, args, _, _ = make_case("adain")
    out, run = fuse(export(Blend().eval(), args, False, 18))
    assert ops(out)["normexport::AdaIN"] == 1 and ops(out)["Mul"] == 2
    assert any("weights 0.6 and 0.5 do not sum to 1" in r for r in reasons(run, "fuse-adain-alpha")), reasons(run, "fuse-adain-alpha")


def test_adain_unbiased_dynamic_spatial_refused():
    """Unbiased variance over a spatial size known only at run time: the exact conversion
    epsilon * (S - 1) / S needs S, so the pattern stays."""
    x = torch.randn(2, 4, 5, 6)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(AdaIN().eval(), (x, x + 1), f, dynamo=False, opset_version=18,
                          input_names=["content", "style"],
                          dynamic_axes={k: {2: "H", 3: "W"} for k in ("content", "style")})
    model = onnx.load_from_string(f.getvalue())
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("the variance correction S / (S - 1) needs a static spatial size" in r
               for r in reasons(run, "fuse-adain")), reasons(run, "fuse-adain")


def test_gn_reducemean_five_dim_grouping_fused(library):
    """Reshape to (N, G, C/G, H, W) and statistics over axes 2, 3, 4: the same GroupNorm."""
    model, w, b = gn_reducemean_model()
    for t in model.graph.initializer:
        if t.name == "grp":
            t.CopyFrom(_i64("grp", [0, 4, 2, 5, 6]))
        if t.name == "axes":
            t.CopyFrom(_i64("axes", [2, 3, 4]))
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::GroupNorm": 1}), reasons(run)
    x = np.random.default_rng(8).standard_normal((2, 8, 5, 6)).astype(np.float32)
    for path, y in run_both(out, {"x": x}).items():
        assert_close(y, np_group_norm(x, 4, w.reshape(-1), b.reshape(-1), 1e-5), f"gn reducemean 5-d grouping {path}")
    # the same grouping with the statistics over the spatial axes only: not a GroupNorm
    for t in model.graph.initializer:
        if t.name == "axes":
            t.CopyFrom(_i64("axes", [3, 4]))
    out, run = fuse(model)
    assert_untouched(model, out, run)
    assert any("reduce axes [3, 4] of the grouped tensor, not the group axes [2, 3, 4]" in r for r in reasons(run))


@pytest.mark.parametrize("name,rule", [("resnet18_gn", "fuse-groupnorm-instancenorm"), ("resnet18_frn", "fuse-frn")])
def test_reference_network_decomposed_then_fused(library, tmp_path, name, rule):
    """A whole network (normexport.graphs) exported with custom_ops=False (torch decomposes every
    GN / FRN layer), then `normexport fold`'s driver: all 20 norm layers fused, verified, and the
    result equals the network's float64 torch evaluation."""
    import copy

    from normexport.graphs import GRAPHS

    from normexport.passes import rewrite
    model, args = GRAPHS[name]()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        normexport.export(model, args, path, custom_ops=False, fold=False)
    out, report = rewrite(onnx.load(path))
    assert report.ok, report.error
    assert report.counts()[rule] == 20
    left = ops(out)
    assert left["InstanceNormalization"] == left["Sqrt"] == left["Pow"] == 0, left
    assert left["ReduceMean"] == 1, left          # the global average pool
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(*[a.double() for a in args]).numpy()
    feeds = {i.name: a.numpy() for i, a in zip(out.graph.input, args)}
    for path_, y in run_both(out, feeds).items():
        assert_close(y, ref, f"{name} decomposed -> fused {path_}")


class _AdaINVarMean(torch.nn.Module):
    """AdaIN with torch.var_mean (biased) and rsqrt: the form C of fuse_adain,
    (c - mean) * (sqrt(var_s + eps) * rsqrt(var_c + eps)) + mean_s (normexport.nn.adain's own
    forward), or form B, (c - mean) * rsqrt(var_c + eps) * sqrt(var_s + eps) + mean_s."""

    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, c, s):
        vc, mc = torch.var_mean(c, dim=(2, 3), keepdim=True, correction=0)
        vs, ms = torch.var_mean(s, dim=(2, 3), keepdim=True, correction=0)
        if self.form == "C":
            return (c - mc) * (torch.sqrt(vs + 1e-5) * torch.rsqrt(vc + 1e-5)) + ms
        return (c - mc) * torch.rsqrt(vc + 1e-5) * torch.sqrt(vs + 1e-5) + ms


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("form", ["B", "C"])
def test_adain_var_mean_rsqrt_forms_fused(library, form, dynamo):
    torch.manual_seed(2)
    c = torch.randn(2, 4, 3, 4) * 3e-3 + 0.5
    s = torch.randn(2, 4, 6, 5) * _channel_scales(4, 0.1) * 2
    model = export(_AdaINVarMean(form).eval(), (c, s), dynamo, 18)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::AdaIN": 1}), (ops(out), reasons(run, "fuse-adain"))
    c64, s64 = c.double().numpy(), s.double().numpy()
    ref = ((c64 - c64.mean((2, 3), keepdims=True)) / np.sqrt(c64.var((2, 3), keepdims=True) + 1e-5)
           * np.sqrt(s64.var((2, 3), keepdims=True) + 1e-5) + s64.mean((2, 3), keepdims=True))
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, (c, s))}
    for path, y in run_both(out, feeds).items():
        assert_close(y, ref, f"adain var_mean form {form} {'dynamo' if dynamo else 'torchscript'} {path}")


def test_reference_network_adain_decomposed_then_fused(library, tmp_path):
    """normexport.graphs adain_style exported with custom_ops=False (normexport.nn.AdaIN's own
    var_mean / rsqrt forward, dynamic batch), fused by the driver, vs the float64 torch eval."""
    import copy

    from normexport.graphs import GRAPHS

    from normexport.passes import rewrite
    model, args = GRAPHS["adain_style"]()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        normexport.export(model, args, path, custom_ops=False, fold=False)
    out, report = rewrite(onnx.load(path))
    assert report.ok, report.error
    assert report.counts()["fuse-adain"] == 1
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(*[a.double() for a in args]).numpy()
    feeds = {i.name: a.numpy() for i, a in zip(out.graph.input, args)}
    for path_, y in run_both(out, feeds).items():
        assert_close(y, ref, f"adain_style decomposed -> fused {path_}")


def test_reference_network_spade_decomposed_then_fused(library, tmp_path):
    """normexport.graphs spade_block exported with custom_ops=False: torch decomposes the
    param-free BN into (x - mean) * rsqrt(var + eps) constants, one normalized tensor feeds two
    SPADE modulations; all three SPADE layers fused, vs the float64 torch eval."""
    import copy

    from normexport.graphs import GRAPHS

    from normexport.passes import rewrite
    model, args = GRAPHS["spade_block"]()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        normexport.export(model, args, path, custom_ops=False, fold=False)
    out, report = rewrite(onnx.load(path))
    assert report.ok, report.error
    assert report.counts()["fuse-spade"] == 3
    assert ops(out)["Sub"] == ops(out)["Mul"] == 0, ops(out)
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(*[a.double() for a in args]).numpy()
    feeds = {i.name: a.numpy() for i, a in zip(out.graph.input, args)}
    for path_, y in run_both(out, feeds).items():
        assert_close(y, ref, f"spade_block decomposed -> fused {path_}")


def _spade_affine_model(k):
    """(x - m) * k then x * (1 + gamma) + beta, with gamma / beta graph inputs (the maps)."""
    shape = [2, 3, 4, 4]
    nodes = [helper.make_node("Sub", ["x", "m"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "k"], ["h"], name="scale"),
             helper.make_node("Add", ["g", "one"], ["g1"], name="one_plus"),
             helper.make_node("Mul", ["h", "g1"], ["hm"], name="modulate"),
             helper.make_node("Add", ["hm", "b"], ["y"], name="shift")]
    inits = [_f32("m", np.array([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)), _f32("k", np.asarray(k).reshape(1, 3, 1, 1)),
             _f32("one", 1.0)]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "g", "b")]
    return _model(nodes, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)


def test_spade_decomposed_bn_fused_and_negative_scale_refused(library):
    k = np.array([2.0, 0.25, 30.0])
    model = _spade_affine_model(k)
    out, run = fuse(model)
    assert ops(out) == Counter({"normexport::SPADE": 1}), reasons(run)
    rng = np.random.default_rng(6)
    feeds = {n: rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for n in ("x", "g", "b")}
    f64 = {n: v.astype(np.float64) for n, v in feeds.items()}
    m = np.array([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)
    ref = (f64["x"] - m) * k.reshape(1, 3, 1, 1) * (1 + f64["g"]) + f64["b"]
    for path, y in run_both(out, feeds).items():
        assert_close(y, ref, f"spade decomposed BN {path}")
    refused = _spade_affine_model([2.0, -0.25, 30.0])
    out, run = fuse(refused)
    assert_untouched(refused, out, run)
    assert any("scales by a non-positive value" in r for r in reasons(run, "fuse-spade")), reasons(run, "fuse-spade")
