"""The ``normexport`` op contract on hand-written ONNX graphs (no torch in the loop): the native
kernel and the ONNX function body against the float64 reference, edge cases, and errors."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import normexport
from normexport.export import attach_functions
from normexport.reference import frn as frn_ref

from conftest import NP_DTYPES

PATHS = ["native", "function"]


def frn_model(dtype="float32", c="C", rank=4, gamma_len=None, eps=1e-6, tlu=1, opset=20):
    """A graph with one FilterResponseNorm node; gamma/beta/tau are graph inputs."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    x_shape = ["N", c] + [f"S{i}" for i in range(rank - 2)]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)] + [
        helper.make_tensor_value_info(n, elem, [gamma_len if (n == "gamma" and gamma_len) else c])
        for n in ("gamma", "beta", "tau")]
    node = helper.make_node("FilterResponseNorm", ["X", "gamma", "beta", "tau"], ["Y"],
                            domain="normexport", name="frn_node", eps=eps, tlu=tlu)
    graph = helper.make_graph([node], "frn", inputs, [helper.make_tensor_value_info("Y", elem, None)])
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
    d = NP_DTYPES[dtype]
    return {"X": (r.standard_normal(shape) * scale + offset).astype(d),
            "gamma": (0.5 + r.random(c)).astype(d), "beta": (r.standard_normal(c) * 0.3).astype(d),
            "tau": (r.standard_normal(c) * 0.3).astype(d)}


def reference(f, eps=1e-6, tlu=1):
    p = {k: v.astype(np.float64) for k, v in f.items()}
    return frn_ref.filter_response_norm(p["X"], p["gamma"], p["beta"], p["tau"] if tlu else None, eps)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 3, 17), (8, 5, 9, 11), (2, 4, 3, 5, 7), (3, 2, 1, 1),
                                   (2, 3, 300, 301)])
@pytest.mark.parametrize("tlu", [1, 0])
def test_contract(path, dtype, shape, tlu, library):
    f = feeds_for(shape, dtype, seed=len(shape))
    y = run(frn_model(dtype, rank=len(shape), eps=1e-4, tlu=tlu), f, path)
    tol = normexport.registry.REGISTRY["frn"].tolerances[dtype]
    assert normexport.compare([y], [reference(f, 1e-4, tlu)], tolerance=tol)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_plane_above_the_cache_budget(dtype, library):
    """A plane bigger than a task's L2 budget (2 MiB at most) is written tail first."""
    f = feeds_for((1, 2, 700, 1000), dtype, seed=4)
    y = run(frn_model(dtype), f, "native")
    result = normexport.compare([y], [reference(f)], tolerance=normexport.registry.REGISTRY["frn"].tolerances[dtype])
    assert result, str(result)


@pytest.mark.parametrize("path", PATHS)
def test_threads_give_identical_results(path, library):
    f = feeds_for((4, 16, 33, 35), "float32", seed=5)
    m = frn_model()
    ys = [run(m, f, path, threads=t) for t in (1, 2, 4)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
def test_nan_and_inf_propagate(path, library):
    f = feeds_for((2, 3, 4, 4), "float32", seed=2)
    f["X"][0, 1, 2, 2] = np.nan
    f["X"][1, 2, 0, 0] = np.inf
    y = run(frn_model(tlu=0), f, path)
    expected = reference(f, tlu=0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.isnan(y[0, 1]).all() and np.isfinite(y[0, 0]).all()
    assert normexport.compare([y], [expected])


@pytest.mark.parametrize("path", PATHS)
def test_large_mean_is_stable(path, library):
    f = feeds_for((1, 2, 256, 256), "float32", seed=3, scale=1e-2, offset=1e3)
    assert normexport.compare([run(frn_model(), f, path)], [reference(f)])


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch(path, library):
    f = feeds_for((0, 3, 4, 4), "float32")
    assert run(frn_model(), f, path).shape == (0, 3, 4, 4)


def test_wrong_channel_count_names_op_and_mismatch(library):
    f = feeds_for((2, 16, 5, 7), "float32")
    f["gamma"] = f["gamma"][:8]
    with pytest.raises(Exception) as info:
        run(frn_model(gamma_len="G"), f, "native")
    msg = str(info.value)
    assert "FilterResponseNorm" in msg and "gamma" in msg and "8" in msg and "16" in msg, msg


@pytest.mark.parametrize("rank", [2])
def test_rank_below_three_is_refused(rank, library):
    f = feeds_for((2, 3, 4), "float32")
    f["X"] = f["X"][:, :, 0]
    with pytest.raises(Exception, match="FilterResponseNorm.*rank|rank.*FilterResponseNorm"):
        run(frn_model(rank=rank), f, "native")


@pytest.mark.parametrize("attrs,match", [({"eps": -1.0}, "eps"), ({"tlu": 2}, "tlu")])
def test_bad_attributes_are_refused(attrs, match, library):
    f = feeds_for((1, 3, 4, 4), "float32")
    with pytest.raises(Exception, match=match):
        run(frn_model(**attrs), f, "native")


@pytest.mark.parametrize("path", PATHS)
def test_float64(path, library):
    """Once the library registers the op name, ORT never falls back to the function for a type
    without a kernel, so the CPU kernel table includes float64 (computed in double)."""
    m = frn_model("float32")
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    f = {k: v.astype(np.float64) for k, v in feeds_for((2, 3, 40, 40), "float32").items()}
    y = run(m, f, path)
    assert y.dtype == np.float64
    assert normexport.compare([y], [reference(f)], tolerance=normexport.registry.Tolerance(1e-12, 1e-12))
