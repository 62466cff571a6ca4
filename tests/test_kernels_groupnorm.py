"""The ``normexport::GroupNorm`` op contract on hand-written ONNX graphs (no torch in the loop):
the native CPU kernel and the ONNX function body against the float64 reference, edge cases
(ranks 2-5, one group / one channel per group, fused activations, NaN/Inf, empty tensors, a
large mean against a tiny spread, split groups), thread-count independence, and errors."""

import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import normexport
from normexport.export import attach_functions
from normexport.reference import standard

from conftest import NP_DTYPES

PATHS = ["native", "function"]
DTYPES = {**NP_DTYPES, "float64": np.float64}
TOL = {**normexport.registry.REGISTRY["groupnorm"].tolerances,
       "float64": normexport.registry.Tolerance(1e-12, 1e-12)}


def gn_model(dtype="float32", rank=4, num_groups=2, scale_len=None, opset=20, **attrs):
    """A graph with one GroupNorm node; scale/bias are graph inputs. ``num_groups=None``
    leaves the required attribute out."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(DTYPES[dtype]))
    x_shape = ["N", "C"] + [f"S{i}" for i in range(rank - 2)]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape),
              helper.make_tensor_value_info("scale", elem, [scale_len or "C"]),
              helper.make_tensor_value_info("bias", elem, ["C"])]
    if num_groups is not None:
        attrs["num_groups"] = num_groups
    node = helper.make_node("GroupNorm", ["X", "scale", "bias"], ["Y"], domain="normexport",
                            name="gn_node", **attrs)
    graph = helper.make_graph([node], "gn", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    attach_functions(model)
    return model


def run(model, feeds, path, threads=0):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = normexport.session(model, ["CPUExecutionProvider"], use_library=(path == "native"), sess_options=so)
    return s.run(None, feeds)[0]


def feeds_for(shape, dtype, seed=0, scale=2.0, offset=0.5):
    r = np.random.default_rng(seed)
    c = shape[1]
    d = DTYPES[dtype]
    return {"X": (r.standard_normal(shape) * scale + offset).astype(d),
            "scale": (0.5 + r.random(c)).astype(d), "bias": (r.standard_normal(c) * 0.3).astype(d)}


def reference(f, groups, eps=1e-5, activation=0):
    p = {k: v.astype(np.float64) for k, v in f.items()}
    with np.errstate(invalid="ignore", over="ignore"):
        y = standard.group_norm(p["X"], groups, p["scale"], p["bias"], eps)
        return {0: y, 1: np.maximum(y, 0.0), 2: y / (1.0 + np.exp(-y))}[activation]


def check(y, f, groups, dtype, eps=1e-5, activation=0):
    assert y.dtype == DTYPES[dtype] and y.shape == f["X"].shape
    result = normexport.compare([y], [reference(f, groups, eps, activation)], tolerance=TOL[dtype])
    assert result, str(result)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape,groups", [((5, 6), 2), ((3, 6), 6), ((2, 6, 17), 6), ((2, 6, 17), 1),
                                          ((4, 6, 5, 7), 3), ((2, 6, 3, 4, 5), 1), ((1, 8, 9, 9), 4),
                                          ((2, 4, 70, 70), 2)])
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_contract(path, dtype, shape, groups, activation, library):
    f = feeds_for(shape, dtype, seed=len(shape) + groups)
    y = run(gn_model(dtype, rank=len(shape), num_groups=groups, epsilon=1e-4, activation=activation), f, path)
    check(y, f, groups, dtype, 1e-4, activation)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape,groups", [((1, 4, 300, 301), 2), ((2, 2, 200, 300), 1)])
def test_split_groups(dtype, shape, groups, library):
    """Groups of several hundred KiB (whole-group tasks where the L2 holds them, chunked above)."""
    f = feeds_for(shape, dtype, seed=7)
    y = run(gn_model(dtype, num_groups=groups, activation=2), f, "native")
    check(y, f, groups, dtype, activation=2)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_large_groups_batched_equal_one_by_one(dtype, library):
    """Groups above the per-task cache budget (at most 2 MiB): with many of them every group is one
    task (chunk moments, then normalized last chunk first); with few (one sample at a time) the
    chunks of a group are spread over the threads. Both must give the reference and the same bits."""
    cpus = min(os.cpu_count() or 1, 16)
    n, shape1 = 2 * cpus + 1, (1, 2, 600, 1000)          # one group per sample: 600000 values
    f = feeds_for((n,) + shape1[1:], dtype, seed=11)
    m = gn_model(dtype, num_groups=1, activation=1)
    y = run(m, f, "native")
    check(y, f, 1, dtype, activation=1)
    for i in (0, n // 2, n - 1):
        one = dict(f, X=f["X"][i:i + 1])
        np.testing.assert_array_equal(run(m, one, "native"), y[i:i + 1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,groups", [((4, 16, 33, 35), 4), ((1, 4, 300, 301), 1)])
def test_threads_give_identical_results(path, shape, groups, library):
    f = feeds_for(shape, "float32", seed=5)
    m = gn_model(num_groups=groups, activation=2)
    ys = [run(m, f, path, threads=t) for t in (1, 2, 4)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_nan_and_inf_propagate(path, activation, library):
    f = feeds_for((3, 6, 4, 4), "float32", seed=2)
    f["X"][0, 3, 1, 2] = np.nan
    f["X"][1, 0, 0, 0] = np.inf
    y = run(gn_model(num_groups=3, activation=activation), f, path)
    expected = reference(f, 3, activation=activation)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 2:4]).all() and np.isnan(y[1, 0:2]).all()
    assert np.isfinite(y[0, [0, 1, 4, 5]]).all() and np.isfinite(y[1, 2:]).all() and np.isfinite(y[2]).all()
    assert normexport.compare([y], [expected])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,groups", [((1, 4, 256, 256), 2), ((2, 8, 16, 16), 4)])
def test_large_mean_is_stable(path, shape, groups, library):
    f = feeds_for(shape, "float32", seed=3, scale=1e-2, offset=1e3)
    check(run(gn_model(num_groups=groups), f, path), f, groups, "float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(0, 6, 4, 4), (2, 6, 0, 3), (0, 6)])
def test_empty(path, shape, library):
    f = feeds_for(shape, "float32")
    y = run(gn_model(rank=len(shape), num_groups=3), f, path)
    assert y.shape == shape and y.dtype == np.float32


def test_attribute_defaults(library):
    f = feeds_for((2, 6, 4, 4), "float32", seed=4)
    check(run(gn_model(num_groups=3), f, "native"), f, 3, "float32", eps=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_float64(path, rank, library):
    """Once the library registers the op name, ORT never falls back to the function for a type
    without a kernel, so the CPU kernel table includes float64 (computed in double)."""
    shape = (2, 6, 9, 10, 3)[:rank]
    f = feeds_for(shape, "float64", seed=rank)
    y = run(gn_model("float64", rank=rank, num_groups=2, activation=2), f, path)
    check(y, f, 2, "float64", activation=2)


def _error(model, f):
    with pytest.raises(Exception) as info:
        run(model, f, "native")
    return str(info.value)


def test_channels_not_divisible_names_op_and_mismatch(library):
    msg = _error(gn_model(num_groups=4), feeds_for((2, 6, 4, 4), "float32"))
    assert "GroupNorm" in msg and "num_groups=4" in msg and "C=6" in msg, msg


@pytest.mark.parametrize("which", ["scale", "bias"])
def test_wrong_scale_length_names_op_and_mismatch(which, library):
    f = feeds_for((2, 6, 4, 4), "float32")
    f[which] = f[which][:3]
    m = gn_model(num_groups=3)
    for v in m.graph.input:
        if v.name == which:
            v.type.tensor_type.shape.dim[0].dim_param = "K"
    msg = _error(m, f)
    assert "GroupNorm" in msg and which in msg and "3 elements" in msg and "C=6" in msg, msg


@pytest.mark.parametrize("attrs,match", [({"num_groups": 0}, "num_groups must be > 0"),
                                         ({"num_groups": -2}, "num_groups must be > 0"),
                                         ({"num_groups": None}, "num_groups"),
                                         ({"epsilon": -1.0}, "epsilon"),
                                         ({"epsilon": float("inf")}, "epsilon"),
                                         ({"activation": 3}, "activation")])
def test_bad_attributes_are_refused(attrs, match, library):
    f = feeds_for((1, 6, 4, 4), "float32")
    msg = _error(gn_model(**{"num_groups": 3, **attrs}), f)
    assert "GroupNorm" in msg and match in msg, msg


def test_rank_below_two_is_refused(library):
    m = gn_model(rank=2, num_groups=1)
    m.graph.input[0].type.tensor_type.shape.ClearField("dim")
    f = {"X": np.ones(6, np.float32), "scale": np.ones(6, np.float32), "bias": np.zeros(6, np.float32)}
    msg = _error(m, f)
    assert "GroupNorm" in msg and "rank" in msg, msg


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_native_kernel_serves_the_node(dtype, library):
    f = feeds_for((2, 6, 4, 4), dtype)
    m = gn_model(dtype, num_groups=3)
    native = normexport.served_by(m, f, providers=["CPUExecutionProvider"])
    assert native[("GroupNorm", "CPUExecutionProvider")] == 1, native
    function = normexport.served_by(m, f, providers=["CPUExecutionProvider"], use_library=False)
    assert function[("GroupNorm", "CPUExecutionProvider")] == 0, function


@pytest.mark.parametrize("path", PATHS)
def test_silu_over_a_wide_range(path, library):
    """The CPU kernel's vectorized exp: y from about -300 to 300 (exp over- and underflow)."""
    f = feeds_for((2, 4, 50, 50), "float32", seed=9)
    f["scale"] = np.linspace(1.0, 100.0, 4).astype(np.float32)
    y = run(gn_model(num_groups=2, activation=2), f, path)
    check(y, f, 2, "float32", activation=2)
