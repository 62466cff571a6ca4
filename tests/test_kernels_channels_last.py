"""Channels-last input (``channels_last=1``: X of shape (N, *spatial, C)) of
``normexport::GroupNorm`` and ``normexport::FilterResponseNorm`` on hand-written ONNX graphs:
the native kernels (CPU; CUDA where there is a GPU) and the ONNX function bodies against an
independent float64 reference (X moved to channels first, the numpy references of
``normexport.reference``, moved back), float32 / float16 / float64, ranks 3-5, threads; the
tilings of the CPU kernel (row tiles, groups split over channel blocks, blocks of several
groups); NHWC == transposed NCHW; NaN/Inf, empty tensors, large-mean stability; errors naming
op, node and attribute / mismatch (C is the last dim)."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import normexport
from normexport.export import attach_functions
from normexport.reference import frn as frn_ref
from normexport.reference import standard

from conftest import NP_DTYPES, PROVIDERS

PATHS = ["native", "function"]
DTYPES = {**NP_DTYPES, "float64": np.float64}
F64_TOL = normexport.registry.Tolerance(1e-12, 1e-12)
TOL = {"GroupNorm": {**normexport.registry.REGISTRY["groupnorm"].tolerances, "float64": F64_TOL},
       "FilterResponseNorm": {**normexport.registry.REGISTRY["frn"].tolerances, "float64": F64_TOL}}
PARAMS = {"GroupNorm": ("scale", "bias"), "FilterResponseNorm": ("gamma", "beta", "tau")}
OPS = list(PARAMS)
NODE = {"GroupNorm": "gn_node", "FilterResponseNorm": "frn_node"}


def model(op, dtype="float32", rank=4, channels_last=1, param_len=None, opset=20, **attrs):
    """One ``op`` node; its per-channel parameters are graph inputs. ``channels_last=None``
    leaves the attribute out (default 0)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[dtype]))
    x_shape = ["N"] + [f"S{i}" for i in range(rank - 2)]
    x_shape = x_shape + ["C"] if channels_last == 1 else ["N", "C"] + x_shape[1:]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)] + [
        helper.make_tensor_value_info(p, elem, [param_len or "C"]) for p in PARAMS[op]]
    if channels_last is not None:
        attrs["channels_last"] = channels_last
    node = helper.make_node(op, ["X", *PARAMS[op]], ["Y"], domain="normexport", name=NODE[op], **attrs)
    graph = helper.make_graph([node], op, inputs, [helper.make_tensor_value_info("Y", elem, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    attach_functions(m)
    return m


def run(m, feeds, path, threads=0, provider="CPUExecutionProvider"):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    s = normexport.session(m, providers, use_library=(path == "native"), sess_options=so)
    return s.run(None, feeds)[0]


def feeds_for(op, shape, dtype, seed=0, scale=2.0, offset=0.5):
    """Channels-last feeds: C = shape[-1]."""
    r = np.random.default_rng(seed)
    c = shape[-1]
    d = DTYPES[dtype]
    f = {"X": (r.standard_normal(shape) * scale + offset).astype(d)}
    first = PARAMS[op][0]
    f[first] = (0.5 + r.random(c)).astype(d)
    for p in PARAMS[op][1:]:
        f[p] = (r.standard_normal(c) * 0.3).astype(d)
    return f


def reference(op, f, groups=None, eps=None, activation=0, tlu=1):
    """float64, from the channels-first references: X moved to (N, C, *spatial) and back."""
    p = {k: v.astype(np.float64) for k, v in f.items()}
    x = np.moveaxis(p["X"], -1, 1)
    # the attribute is a float32: the exact value the kernel and the body use
    eps = float(np.float32(1e-5 if op == "GroupNorm" else 1e-6)) if eps is None else float(np.float32(eps))
    with np.errstate(invalid="ignore", over="ignore"):
        if op == "GroupNorm":
            y = standard.group_norm(x, groups, p["scale"], p["bias"], eps)
            y = {0: y, 1: np.maximum(y, 0.0), 2: y / (1.0 + np.exp(-y))}[activation]
        else:
            y = frn_ref.filter_response_norm(x, p["gamma"], p["beta"], p["tau"] if tlu else None, eps)
    return np.moveaxis(y, 1, -1)


def check(op, y, f, dtype, **ref_kw):
    assert y.dtype == DTYPES[dtype] and y.shape == f["X"].shape
    result = normexport.compare([y], [reference(op, f, **ref_kw)], tolerance=TOL[op][dtype])
    assert result, str(result)


# (shape (N, *spatial, C), num_groups, activation) per rank; FRN uses the shape only
CASES = {3: ((3, 37, 12), 4, 2), 4: ((2, 5, 7, 12), 3, 1), 5: ((2, 3, 4, 5, 8), 2, 0)}


def attrs_for(op, rank, eps=1e-4):
    _, groups, act = CASES[rank]
    if op == "GroupNorm":
        return {"num_groups": groups, "epsilon": eps, "activation": act}, {"groups": groups, "eps": eps,
                                                                            "activation": act}
    return {"eps": eps, "tlu": rank % 2}, {"eps": eps, "tlu": rank % 2}


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("op", OPS)
def test_contract(op, dtype, rank, path, threads, library):
    shape = CASES[rank][0]
    attrs, ref_kw = attrs_for(op, rank)
    f = feeds_for(op, shape, dtype, seed=rank)
    y = run(model(op, dtype, rank, **attrs), f, path, threads)
    check(op, y, f, dtype, **ref_kw)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_groupnorm_rank2_and_activations(path, dtype, activation, library):
    """Rank 2 (N, C): channels last is the same layout; every fused activation."""
    for shape, groups in [((5, 6), 3), ((3, 4, 10), 5)]:
        f = feeds_for("GroupNorm", shape, dtype, seed=activation)
        y = run(model("GroupNorm", dtype, len(shape), num_groups=groups, activation=activation), f, path)
        check("GroupNorm", y, f, dtype, groups=groups, activation=activation)


# shapes for the CPU kernel's tilings (512-channel blocks, 32K-element tiles):
#   many row tiles; a group wider than a block (split over blocks); blocks of several groups
#   not ending at 512; one channel per group; C > 512 for FRN (several blocks, unequal last)
TILING_CASES = [((1, 300, 301, 4), 2), ((2, 5, 1100), 1), ((2, 3, 1024), 2), ((2, 7, 3, 1300), 13),
                ((2, 40, 40, 64), 64), ((3, 2, 1537), 1)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape,groups", TILING_CASES)
@pytest.mark.parametrize("op", OPS)
def test_tilings(op, dtype, shape, groups, library):
    f = feeds_for(op, shape, dtype, seed=len(shape) + groups)
    if op == "GroupNorm":
        y = run(model(op, dtype, len(shape), num_groups=groups, activation=2), f, "native")
        check(op, y, f, dtype, groups=groups, activation=2)
    else:
        y = run(model(op, dtype, len(shape)), f, "native")
        check(op, y, f, dtype)


def _nchw(op, f):
    g = dict(f)
    g["X"] = np.ascontiguousarray(np.moveaxis(f["X"], -1, 1))
    return g


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape,groups", [((2, 5, 7, 12), 3), ((1, 300, 301, 4), 2), ((2, 3, 1300), 13)])
@pytest.mark.parametrize("op", OPS)
def test_equals_transposed_channels_first(op, path, dtype, shape, groups, library):
    """The NHWC node gives the NCHW node's result, transposed (within the dtype's tolerance:
    the two layouts reduce in different orders)."""
    attrs = {"num_groups": groups, "activation": 2} if op == "GroupNorm" else {}
    f = feeds_for(op, shape, dtype, seed=11)
    y_last = run(model(op, dtype, len(shape), **attrs), f, path)
    y_first = run(model(op, dtype, len(shape), channels_last=0, **attrs), _nchw(op, f), path)
    assert y_last.shape == shape and y_first.shape == (shape[0], shape[-1], *shape[1:-1])
    result = normexport.compare([y_last], [np.moveaxis(y_first, 1, -1).astype(np.float64)],
                                tolerance=TOL[op][dtype])
    assert result, str(result)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
def test_default_is_channels_first(op, path, library):
    """No attribute = channels_last=0: a (N, C, H, W) input normalizes over H, W."""
    attrs = {"num_groups": 2} if op == "GroupNorm" else {}
    f = feeds_for(op, (2, 5, 6, 4), "float32", seed=3)  # channels last, C = 4
    y = run(model(op, "float32", 4, channels_last=None, **attrs), _nchw(op, f), path)
    expected = np.moveaxis(reference(op, f, groups=2), -1, 1)
    assert y.shape == (2, 4, 5, 6)
    assert normexport.compare([y], [expected], tolerance=TOL[op]["float32"])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,groups", [((8, 64, 64, 8), 2), ((1, 300, 301, 4), 1), ((2, 5, 1100), 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threads_give_identical_results(op, path, shape, groups, dtype, library):
    """Bit-identical for 1, 2, 4 threads (float64 too: its output keeps the last bits of the
    statistics, so a combination order that depended on scheduling would show)."""
    attrs = {"num_groups": groups, "activation": 2} if op == "GroupNorm" else {}
    f = feeds_for(op, shape, dtype, seed=5)
    m = model(op, dtype, len(shape), **attrs)
    ys = [run(m, f, path, threads=t) for t in (1, 2, 4)]
    if path == "function" and dtype == "float64":
        # ORT's own float64 reductions split by thread count: the last bits may differ
        np.testing.assert_allclose(ys[1], ys[0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(ys[2], ys[0], rtol=1e-13, atol=1e-13)
        return
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_propagate(op, path, library):
    f = feeds_for(op, (3, 4, 4, 6), "float32", seed=2)
    f["X"][0, 1, 2, 3] = np.nan   # sample 0, channel 3 (GroupNorm: group 1 of 3)
    f["X"][1, 0, 0, 0] = np.inf   # sample 1, channel 0 (GroupNorm: group 0)
    attrs = {"num_groups": 3} if op == "GroupNorm" else {"tlu": 0}
    y = run(model(op, **attrs), f, path)
    expected = reference(op, f, groups=3, tlu=0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    if op == "GroupNorm":
        assert np.isnan(y[0, ..., 2:4]).all() and np.isnan(y[1, ..., 0:2]).all()
        assert np.isfinite(y[0, ..., [0, 1, 4, 5]]).all() and np.isfinite(y[2]).all()
    else:
        assert np.isnan(y[0, ..., 3]).all() and np.isfinite(y[0, ..., [0, 1, 2, 4, 5]]).all()
    assert normexport.compare([y], [expected])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,groups", [((1, 256, 256, 4), 2), ((2, 16, 16, 8), 4), ((1, 8, 8, 1100), 1)])
def test_groupnorm_large_mean_is_stable(path, shape, groups, library):
    """mean 1e3 against std 1e-2 (float32): E[x^2] - E[x]^2 would lose every digit."""
    f = feeds_for("GroupNorm", shape, "float32", seed=3, scale=1e-2, offset=1e3)
    check("GroupNorm", run(model("GroupNorm", num_groups=groups), f, path), f, "float32", groups=groups)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(0, 4, 4, 6), (2, 0, 3, 6), (2, 4, 4, 0)])
def test_empty(op, path, shape, library):
    f = feeds_for(op, shape, "float32")
    attrs = {"num_groups": 3} if op == "GroupNorm" else {}
    y = run(model(op, **attrs), f, path)
    assert y.shape == shape and y.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("op", OPS)
def test_native_kernel_serves_the_node(op, dtype, library):
    f = feeds_for(op, (2, 4, 4, 6), dtype)
    m = model(op, dtype, **({"num_groups": 3} if op == "GroupNorm" else {}))
    native = normexport.served_by(m, f, providers=["CPUExecutionProvider"])
    assert native[(op, "CPUExecutionProvider")] == 1, native
    function = normexport.served_by(m, f, providers=["CPUExecutionProvider"], use_library=False)
    assert function[(op, "CPUExecutionProvider")] == 0, function


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", OPS)
def test_execution_providers(op, dtype, rank, provider, library):
    """Every provider's kernel (the CUDA one where there is a GPU) vs the float64 reference,
    and which provider served the node."""
    shape = CASES[rank][0]
    attrs, ref_kw = attrs_for(op, rank)
    f = feeds_for(op, shape, dtype, seed=rank + 1)
    m = model(op, dtype, rank, **attrs)
    check(op, run(m, f, "native", provider=provider), f, dtype, **ref_kw)
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    served = normexport.served_by(m, f, providers=providers)
    assert served[(op, provider)] == 1, served


# ---- errors ----------------------------------------------------------------------------------

def _error(m, f, path="native"):
    with pytest.raises(Exception) as info:
        run(m, f, path)
    return str(info.value)


@pytest.mark.parametrize("value", [2, -1])
@pytest.mark.parametrize("op", OPS)
def test_bad_channels_last_is_refused(op, value, library):
    attrs = {"num_groups": 3} if op == "GroupNorm" else {}
    msg = _error(model(op, channels_last=value, **attrs), feeds_for(op, (1, 4, 4, 6), "float32"))
    assert f"normexport::{op}" in msg and NODE[op] in msg and "channels_last" in msg and str(value) in msg, msg


@pytest.mark.parametrize("op", OPS)
def test_bad_channels_last_fails_the_function_body(op, library):
    """Without the library the body refuses it too (a failing Reshape), instead of guessing."""
    attrs = {"num_groups": 3} if op == "GroupNorm" else {}
    f = feeds_for(op, (1, 4, 4, 6), "float32")
    with pytest.raises(Exception, match="(?i)reshape"):
        run(model(op, channels_last=2, **attrs), f, "function")


@pytest.mark.parametrize("op", OPS)
def test_channels_last_as_float_is_refused(op, library):
    m = model(op, **({"num_groups": 3} if op == "GroupNorm" else {}))
    for a in m.graph.node[0].attribute:
        if a.name == "channels_last":
            a.CopyFrom(helper.make_attribute("channels_last", 1.0))
    msg = _error(m, feeds_for(op, (1, 4, 4, 6), "float32"))
    assert op in msg and "channels_last" in msg and "int" in msg, msg


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", OPS)
def test_params_sized_for_channels_first_are_refused(op, path, library):
    """X (2, 4, 5, 6) channels last has C = 6: parameters of length 4 (X's dim 1) are an error
    naming the op, the parameter and the last-dim C (a Reshape failure in the body)."""
    f = feeds_for(op, (2, 4, 5, 6), "float32")
    first = PARAMS[op][0]
    f[first] = f[first][:4]
    m = model(op, param_len="K", **({"num_groups": 2} if op == "GroupNorm" else {}))
    # only the first parameter is short: give the graph input its own dim
    for v in m.graph.input:
        if v.name != first and v.name != "X":
            v.type.tensor_type.shape.dim[0].dim_param = "C"
    if path == "function":
        with pytest.raises(Exception, match="(?i)reshape"):
            run(m, f, path)
        return
    msg = _error(m, f)
    assert op in msg and first in msg and "4 elements" in msg and "C=6" in msg and "last dim" in msg, msg


def test_groupnorm_groups_must_divide_the_last_dim(library):
    """(2, 6, 4, 4) channels last: C = 4, which num_groups=3 does not divide (it divides dim 1)."""
    f = feeds_for("GroupNorm", (2, 6, 4, 4), "float32")
    msg = _error(model("GroupNorm", num_groups=3), f)
    assert "GroupNorm" in msg and "num_groups=3" in msg and "C=4" in msg and "last dim" in msg, msg
    with pytest.raises(Exception, match="(?i)reshape"):
        run(model("GroupNorm", num_groups=3), f, "function")


@pytest.mark.parametrize("op", OPS)
def test_rank_is_checked(op, library):
    rank = 1 if op == "GroupNorm" else 2
    m = model(op, rank=2, **({"num_groups": 1} if op == "GroupNorm" else {}))
    m.graph.input[0].type.tensor_type.shape.ClearField("dim")
    f = feeds_for(op, (3, 6), "float32")
    if rank == 1:
        f["X"] = f["X"][0]
    msg = _error(m, f)
    assert op in msg and "rank" in msg and "channels_last=1" in msg, msg


# ---- shape inference through the body -------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", OPS)
def test_shape_inference_through_the_body(op, dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    attrs = {"num_groups": 3, "channels_last": 1} if op == "GroupNorm" else {"channels_last": 1}
    node = helper.make_node(op, ["X", *PARAMS[op]], ["Y"], domain="normexport", **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info("X", elem, ["N", 5, 7, 6])]
        + [helper.make_tensor_value_info(p, elem, [6]) for p in PARAMS[op]],
        [helper.make_tensor_value_info("Y", TensorProto.UNDEFINED, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    attach_functions(m)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == elem
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["N", 5, 7, 6]


# ---- AdaIN: content (N, *spatial, C), style (N, *spatial', C) ---------------------------------

from normexport.reference import style as style_ref  # noqa: E402

ADAIN_TOL = {**normexport.registry.REGISTRY["adain"].tolerances, "float64": F64_TOL}
# (content shape, style shape, alpha) per rank: style spatial sizes differ from content's
ADAIN_CASES = {3: ((3, 37, 12), (3, 11, 12), 1.0), 4: ((2, 5, 7, 12), (2, 3, 9, 12), 0.5),
               5: ((2, 3, 4, 5, 8), (2, 2, 3, 4, 8), 0.75)}


def adain_model(dtype="float32", rank=4, channels_last=1, style_c="C", **attrs):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[dtype]))
    sp = [f"S{i}" for i in range(rank - 2)]
    sp_style = [f"T{i}" for i in range(rank - 2)]
    if channels_last == 1:
        shapes = (["N", *sp, "C"], ["N", *sp_style, style_c])
    else:
        shapes = (["N", "C", *sp], ["N", style_c, *sp_style])
    if channels_last is not None:
        attrs["channels_last"] = channels_last
    node = helper.make_node("AdaIN", ["content", "style"], ["Y"], domain="normexport", name="adain_node", **attrs)
    graph = helper.make_graph(
        [node], "adain", [helper.make_tensor_value_info("content", elem, shapes[0]),
                          helper.make_tensor_value_info("style", elem, shapes[1])],
        [helper.make_tensor_value_info("Y", elem, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    attach_functions(m)
    return m


def adain_feeds(content_shape, style_shape, dtype, seed=0, scale=2.0, offset=0.5):
    r = np.random.default_rng(seed)
    d = DTYPES[dtype]
    return {"content": (r.standard_normal(content_shape) * scale + offset).astype(d),
            "style": (r.standard_normal(style_shape) * 1.5 - 0.7).astype(d)}


def adain_reference(f, eps=1e-5, alpha=1.0):
    """float64, from the channels-first reference (content / style moved to channels first)."""
    x = np.moveaxis(f["content"].astype(np.float64), -1, 1)
    s = np.moveaxis(f["style"].astype(np.float64), -1, 1)
    with np.errstate(invalid="ignore", over="ignore"):
        y = style_ref.adaptive_instance_norm(x, s, float(np.float32(eps)), float(np.float32(alpha)))
    return np.moveaxis(y, 1, -1)


def adain_check(y, f, dtype, **ref_kw):
    assert y.dtype == DTYPES[dtype] and y.shape == f["content"].shape
    result = normexport.compare([y], [adain_reference(f, **ref_kw)], tolerance=ADAIN_TOL[dtype])
    assert result, str(result)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_adain_contract(dtype, rank, path, threads, library):
    cs, ss, alpha = ADAIN_CASES[rank]
    f = adain_feeds(cs, ss, dtype, seed=rank)
    y = run(adain_model(dtype, rank, epsilon=1e-4, alpha=alpha), f, path, threads)
    adain_check(y, f, dtype, eps=1e-4, alpha=alpha)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("content_shape,style_shape", [((1, 300, 301, 4), (1, 100, 50, 4)),
                                                       ((2, 5, 1100), (2, 70, 1100)),
                                                       ((2, 40, 40, 64), (2, 90, 100, 64)),
                                                       ((3, 2, 1537), (3, 1, 1537))])
def test_adain_tilings(dtype, content_shape, style_shape, library):
    """Many row tiles (content and style differently), C over 512 (several channel blocks,
    an unequal last one), a one-row style."""
    f = adain_feeds(content_shape, style_shape, dtype, seed=9)
    y = run(adain_model(dtype, len(content_shape), alpha=0.9), f, "native")
    adain_check(y, f, dtype, alpha=0.9)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_adain_equals_transposed_channels_first(path, dtype, library):
    f = adain_feeds((2, 30, 31, 12), (2, 7, 9, 12), dtype, seed=4)
    y_last = run(adain_model(dtype, 4, alpha=0.75), f, path)
    nchw = {k: np.ascontiguousarray(np.moveaxis(v, -1, 1)) for k, v in f.items()}
    y_first = run(adain_model(dtype, 4, channels_last=0, alpha=0.75), nchw, path)
    result = normexport.compare([y_last], [np.moveaxis(y_first, 1, -1).astype(np.float64)],
                                tolerance=ADAIN_TOL[dtype])
    assert result, str(result)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("content_shape,style_shape", [((8, 64, 64, 8), (8, 32, 32, 8)),
                                                       ((1, 300, 301, 4), (1, 200, 100, 4))])
def test_adain_threads_give_identical_results(path, dtype, content_shape, style_shape, library):
    f = adain_feeds(content_shape, style_shape, dtype, seed=5)
    m = adain_model(dtype, 4, alpha=0.5)
    ys = [run(m, f, path, threads=t) for t in (1, 2, 4)]
    if path == "function" and dtype == "float64":  # ORT's own float64 reductions
        np.testing.assert_allclose(ys[1], ys[0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(ys[2], ys[0], rtol=1e-13, atol=1e-13)
        return
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
def test_adain_nan_and_inf_propagate(path, library):
    f = adain_feeds((3, 4, 4, 6), (3, 3, 5, 6), "float32", seed=2)
    f["content"][0, 1, 2, 3] = np.nan  # content plane (0, 3)
    f["style"][1, 0, 0, 1] = np.inf    # style plane (1, 1)
    y = run(adain_model(alpha=0.5), f, path)
    expected = adain_reference(f, alpha=0.5)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, ..., 3]).all() and np.isnan(y[1, ..., 1]).all()
    assert np.isfinite(y[0, ..., [0, 1, 2, 4, 5]]).all() and np.isfinite(y[2]).all()
    assert normexport.compare([y], [expected])


@pytest.mark.parametrize("path", PATHS)
def test_adain_large_mean_is_stable(path, library):
    f = adain_feeds((1, 256, 256, 4), (1, 64, 64, 4), "float32", seed=3, scale=1e-2, offset=1e3)
    f["style"] = (f["style"] * 1e-2 + 1e3).astype(np.float32)
    adain_check(run(adain_model(alpha=0.8), f, path), f, "float32", alpha=0.8)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_shape,style_shape", [((0, 4, 4, 6), (0, 3, 3, 6)), ((2, 0, 3, 6), (2, 2, 2, 6)),
                                                       ((2, 4, 4, 0), (2, 3, 3, 0))])
def test_adain_empty(path, content_shape, style_shape, library):
    f = adain_feeds(content_shape, style_shape, "float32")
    y = run(adain_model(), f, path)
    assert y.shape == content_shape and y.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_adain_native_kernel_serves_the_node(dtype, library):
    f = adain_feeds((2, 4, 4, 6), (2, 3, 3, 6), dtype)
    m = adain_model(dtype)
    assert normexport.served_by(m, f, providers=["CPUExecutionProvider"])[("AdaIN", "CPUExecutionProvider")] == 1
    function = normexport.served_by(m, f, providers=["CPUExecutionProvider"], use_library=False)
    assert function[("AdaIN", "CPUExecutionProvider")] == 0, function


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_adain_execution_providers(dtype, rank, provider, library):
    cs, ss, alpha = ADAIN_CASES[rank]
    f = adain_feeds(cs, ss, dtype, seed=rank + 1)
    m = adain_model(dtype, rank, alpha=alpha)
    adain_check(run(m, f, "native", provider=provider), f, dtype, alpha=alpha)
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    assert normexport.served_by(m, f, providers=providers)[("AdaIN", provider)] == 1


@pytest.mark.parametrize("value", [2, -1])
def test_adain_bad_channels_last_is_refused(value, library):
    msg = _error(adain_model(channels_last=value), adain_feeds((1, 4, 4, 6), (1, 3, 3, 6), "float32"))
    assert "normexport::AdaIN" in msg and "adain_node" in msg and "channels_last" in msg and str(value) in msg, msg
    with pytest.raises(Exception, match="(?i)reshape"):
        run(adain_model(channels_last=value), adain_feeds((1, 4, 4, 6), (1, 3, 3, 6), "float32"), "function")


@pytest.mark.parametrize("path", PATHS)
def test_adain_style_channels_are_the_last_dim(path, library):
    """content (2, 6, 5, 4) and style (2, 6, 3, 5) agree on dim 1 but not on the last dim."""
    f = adain_feeds((2, 6, 5, 4), (2, 6, 3, 5), "float32")
    m = adain_model(style_c="K")
    if path == "function":
        with pytest.raises(Exception, match="(?i)reshape"):
            run(m, f, path)
        return
    msg = _error(m, f)
    assert "AdaIN" in msg and "channels C=5" in msg and "channels C=4" in msg and "last dim" in msg, msg


def test_adain_rank_is_checked(library):
    m = adain_model(rank=3)
    for v in m.graph.input:
        v.type.tensor_type.shape.ClearField("dim")
    msg = _error(m, {"content": np.ones((2, 6), np.float32), "style": np.ones((2, 6), np.float32)})
    assert "AdaIN" in msg and "rank" in msg and "channels_last=1" in msg, msg


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_adain_shape_inference_through_the_body(dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    node = helper.make_node("AdaIN", ["content", "style"], ["Y"], domain="normexport", channels_last=1)
    graph = helper.make_graph(
        [node], "adain", [helper.make_tensor_value_info("content", elem, ["N", 5, 7, 6]),
                          helper.make_tensor_value_info("style", elem, ["N", 3, 2, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.UNDEFINED, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    attach_functions(m)
    out = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True).graph.output[0].type.tensor_type
    assert out.elem_type == elem
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["N", 5, 7, 6]


# ---- the CUDA kernels without a GPU ----------------------------------------------------------

CUDA_EMU = Path(__file__).resolve().parents[1] / "custom_ops" / "tests" / "cuda_emu" / "run.sh"


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_cuda_kernels_in_cpu_emulation(tmp_path):
    """gpu_check (custom_ops/tests/gpu_check.cu) on the CPU emulation of CUDA
    (custom_ops/tests/cuda_emu): every GroupNorm / FilterResponseNorm / AdaIN launcher, channels
    first and last, and the PositionalNorm / SPADE (batch and instance statistics) /
    SwitchableNorm launchers, float32 / float16, vs their float64 references, grid-stride loops
    included; for the last three also NaN / inf inputs (NaN and infinities where the reference
    has them). Shared memory is NaN-filled at every block's start, so a read of a slot no thread
    wrote fails. (Indexing, barriers and numerics; on a GPU `normexport gpu-check` runs the same
    cases.)"""
    r = subprocess.run(["sh", str(CUDA_EMU), str(tmp_path)], capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    passed = [ln for ln in r.stdout.splitlines() if ln.endswith("PASS")]
    lines = [ln for ln in passed if " nhwc " in ln]
    for op in ("GroupNorm", "FilterResponseNorm", "AdaIN"):
        assert sum(ln.startswith(op) for ln in lines) >= 8, out[-4000:]
        # both the one-kernel path and the split-row path (two kernels + scratch) ran
        assert any(ln.startswith(op) and " split " in ln for ln in lines), out[-4000:]
        assert any(ln.startswith(op) and " split " not in ln for ln in lines), out[-4000:]
    for op in ("PositionalNorm", "SPADE", "SwitchableNorm"):
        mine = [ln for ln in passed if ln.startswith(op + " ")]
        assert len(mine) >= 10, out[-4000:]
        assert any(" float16 " in ln for ln in mine), out[-4000:]
        assert any(" nan" in ln for ln in mine), out[-4000:]  # a NaN / inf case
    spade = [ln for ln in passed if ln.startswith("SPADE ")]
    assert any(" batch" in ln for ln in spade) and any(" instance" in ln for ln in spade), out[-4000:]
    sn = [ln for ln in passed if ln.startswith("SwitchableNorm ")]
    assert any(" no-in " in ln for ln in sn) and any(" no-bn" in ln for ln in sn), out[-4000:]
    assert r.stdout.rstrip().endswith("0 failed: PASS"), out[-4000:]
