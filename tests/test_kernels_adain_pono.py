"""The ``normexport::AdaIN`` and ``normexport::PositionalNorm`` op contracts on hand-written ONNX
graphs (no torch in the loop): the native kernels and the ONNX function bodies against the
float64 references, edge cases, and errors."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import normexport
from normexport.export import attach_functions
from normexport.reference import pono as pono_ref
from normexport.reference import style as style_ref

PATHS = ["native", "function"]
NAN_OK = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
TOL = {"float32": normexport.registry.Tolerance(1e-5, 1e-6), "float16": normexport.registry.Tolerance(1e-2, 1e-3),
       "float64": normexport.registry.Tolerance(1e-10, 1e-10)}


def op_model(op_type, inputs, outputs, dtype="float32", opset=20, **attrs):
    """One normexport node; inputs: name -> rank (symbolic dims)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP[dtype]))
    vis = [helper.make_tensor_value_info(n, elem, [f"{n}_{i}" for i in range(r)]) for n, r in inputs.items()]
    node = helper.make_node(op_type, list(inputs), list(outputs), domain="normexport", name=f"{op_type}_node",
                            **attrs)
    graph = helper.make_graph([node], op_type, vis, [helper.make_tensor_value_info(o, elem, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    attach_functions(model)
    return model


def run(model, feeds, path, threads=0):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = normexport.session(model, ["CPUExecutionProvider"], use_library=(path == "native"), sess_options=so)
    return s.run(None, feeds)


def rand(shape, dtype, seed, scale=2.0, offset=0.5):
    r = np.random.default_rng(seed)
    return (r.standard_normal(shape) * scale + offset).astype(NP[dtype])


def close(actual, expected, dtype):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == NP[dtype] and a.shape == e.shape, (a.dtype, a.shape, e.shape)
    assert normexport.compare(list(actual), list(expected), tolerance=TOL[dtype])


# ---- AdaIN ----------------------------------------------------------------------------------

def adain_model(rank, dtype="float32", **attrs):
    return op_model("AdaIN", {"content": rank, "style": rank}, ["Y"], dtype, **attrs)


def adain_feeds(shape, style_spatial, dtype, seed=0, scale=2.0, offset=0.5):
    return {"content": rand(shape, dtype, seed, scale, offset),
            "style": rand((*shape[:2], *style_spatial), dtype, seed + 1, 0.7, -0.7)}


def adain_ref(f, eps=1e-5, alpha=1.0):
    # the attributes are float32 in the node: the reference uses the same rounded values
    return [style_ref.adaptive_instance_norm(f["content"].astype(np.float64), f["style"].astype(np.float64),
                                             float(np.float32(eps)), float(np.float32(alpha)))]


def test_native_kernels_serve_the_nodes(library):
    f = adain_feeds((2, 3, 5, 5), (4, 4), "float32")
    assert normexport.served_by(adain_model(4), f, providers=["CPUExecutionProvider"])[
        ("AdaIN", "CPUExecutionProvider")] == 1
    x = {"X": rand((2, 3, 5, 5), "float32", 0)}
    assert normexport.served_by(pono_model(4), x, providers=["CPUExecutionProvider"])[
        ("PositionalNorm", "CPUExecutionProvider")] == 1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape,style_spatial", [((3, 5, 17), (9,)), ((4, 6, 5, 7), (7, 13)),
                                                 ((2, 3, 3, 4, 5), (2, 2, 6)), ((2, 4, 6, 6), (6, 6)),
                                                 ((1, 2, 1, 1), (3, 1)), ((2, 3, 150, 151), (40, 30))])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_adain_contract(path, dtype, shape, style_spatial, alpha, library):
    f = adain_feeds(shape, style_spatial, dtype, seed=len(shape))
    ys = run(adain_model(len(shape), dtype, epsilon=1e-4, alpha=alpha), f, path)
    close(ys, adain_ref(f, 1e-4, alpha), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adain_plane_above_the_cache_budget(dtype, library):
    """A content plane bigger than a task's L2 budget (2 MiB at most) is written tail first."""
    f = adain_feeds((1, 2, 700, 1000), (300, 200), dtype, seed=9)
    close(run(adain_model(4, dtype, alpha=0.7), f, "native"), adain_ref(f, 1e-5, 0.7), dtype)


def test_adain_defaults_and_identity(library):
    f = adain_feeds((2, 4, 6, 6), (3, 3), "float32")
    close(run(adain_model(4), f, "native"), adain_ref(f), "float32")      # epsilon 1e-5, alpha 1
    (same,) = run(adain_model(4), {"content": f["content"], "style": f["content"]}, "native")
    close([same], [f["content"].astype(np.float64)], "float32")            # AdaIN(x, x) = x


@pytest.mark.parametrize("path", PATHS)
def test_adain_threads_give_identical_results(path, library):
    f = adain_feeds((4, 16, 33, 35), (20, 21), "float32", seed=5)
    m = adain_model(4, alpha=0.5)
    ys = [run(m, f, path, threads=t)[0] for t in (1, 2, 4)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@NAN_OK
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_adain_nan_and_inf_propagate(path, alpha, library):
    f = adain_feeds((2, 4, 5, 5), (3, 3), "float32", seed=3)
    f["content"][0, 1, 2, 2] = np.nan
    f["content"][1, 0, 0, 0] = np.inf
    f["style"][1, 3, 0, 1] = np.nan
    f["style"][0, 2, 1, 1] = -np.inf
    (y,) = run(adain_model(4, alpha=alpha), f, path)
    expected = adain_ref(f, alpha=alpha)[0]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    for n, c in [(0, 1), (1, 0), (1, 3), (0, 2)]:
        assert np.isnan(y[n, c]).all(), (n, c)
    assert np.isfinite(y[0, 0]).all() and np.isfinite(y[1, 1]).all()
    assert normexport.compare([y], [expected])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_adain_large_mean_is_stable(path, alpha, library):
    f = adain_feeds((1, 2, 256, 256), (64, 64), "float32", seed=3, scale=1e-2, offset=1e3)
    f["content"][:, :, 0, :8] += 5e-2                  # outlying first values
    close(run(adain_model(4, alpha=alpha), f, path), adain_ref(f, alpha=alpha), "float32")


@pytest.mark.parametrize("path", PATHS)
def test_adain_empty_batch(path, library):
    (y,) = run(adain_model(4), adain_feeds((0, 4, 5, 5), (3, 3), "float32"), path)
    assert y.shape == (0, 4, 5, 5)


@pytest.mark.parametrize("style_shape,match", [
    ((2, 4, 3), r"AdaIN.*rank.*content shape \[2,4,5,5\].*style shape \[2,4,3\]"),
    ((3, 4, 3, 3), r"AdaIN.*batch N=3.*content batch N=2"),
    ((2, 5, 3, 3), r"AdaIN.*channels C=5.*content channels C=4"),
])
def test_adain_bad_shapes_name_op_and_mismatch(style_shape, match, library):
    f = {"content": rand((2, 4, 5, 5), "float32", 0), "style": rand(style_shape, "float32", 1)}
    m = op_model("AdaIN", {"content": 4, "style": len(style_shape)}, ["Y"])
    with pytest.raises(Exception, match=match):
        run(m, f, "native")


def test_adain_rank_below_three_is_refused(library):
    f = {"content": rand((2, 4), "float32", 0), "style": rand((2, 4), "float32", 1)}
    with pytest.raises(Exception, match="AdaIN.*rank >= 3"):
        run(adain_model(2), f, "native")


@pytest.mark.parametrize("attrs,match", [({"epsilon": -1.0}, "epsilon"), ({"alpha": 1.5}, "alpha"),
                                         ({"alpha": -0.1}, "alpha")])
def test_adain_bad_attributes_are_refused(attrs, match, library):
    with pytest.raises(Exception, match=f"AdaIN.*{match}"):
        run(adain_model(4, **attrs), adain_feeds((1, 3, 4, 4), (2, 2), "float32"), "native")


# ---- PositionalNorm -------------------------------------------------------------------------

def pono_model(rank, dtype="float32", **attrs):
    return op_model("PositionalNorm", {"X": rank}, ["Y", "Mean", "Std"], dtype, **attrs)


def pono_ref_of(x, eps=1e-5, unbiased=1):
    return list(pono_ref.positional_norm(x.astype(np.float64), float(np.float32(eps)), bool(unbiased)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", [(3, 5, 17), (4, 6, 5, 7), (2, 3, 3, 4, 5), (2, 2, 3, 3),
                                   (2, 64, 40, 41), (1, 700, 3, 5), (2, 3, 1, 1)])
@pytest.mark.parametrize("unbiased", [1, 0])
def test_pono_contract(path, dtype, shape, unbiased, library):
    x = rand(shape, dtype, seed=len(shape))
    ys = run(pono_model(len(shape), dtype, epsilon=1e-4, unbiased=unbiased), {"X": x}, path)
    close(ys, pono_ref_of(x, 1e-4, unbiased), dtype)


@pytest.mark.parametrize("path", PATHS)
def test_pono_one_channel_biased(path, library):
    x = rand((2, 1, 7), "float32", 4)
    ys = run(pono_model(3, unbiased=0), {"X": x}, path)   # Y = 0, Mean = x, Std = sqrt(eps)
    close(ys, pono_ref_of(x, 1e-5, 0), "float32")


def test_pono_defaults(library):
    x = rand((2, 6, 4, 4), "float32", 1)
    close(run(pono_model(4), {"X": x}, "native"), pono_ref_of(x), "float32")   # epsilon 1e-5, unbiased


@pytest.mark.parametrize("path", PATHS)
def test_pono_threads_give_identical_results(path, library):
    x = rand((3, 24, 37, 41), "float32", 5)
    m = pono_model(4)
    ys = [run(m, {"X": x}, path, threads=t) for t in (1, 2, 4)]
    for a, b in zip(ys[0], ys[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ys[0], ys[2]):
        np.testing.assert_array_equal(a, b)


@NAN_OK
@pytest.mark.parametrize("path", PATHS)
def test_pono_nan_and_inf_propagate(path, library):
    x = rand((2, 6, 4, 4), "float32", 2)
    x[1, 3, 2, 1] = np.nan
    x[0, 0, 1, 3] = np.inf
    x[0, 4, 3, 0] = -np.inf
    ys = run(pono_model(4), {"X": x}, path)
    expected = pono_ref_of(x)
    for y, e in zip(ys, expected):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(e))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(e))
    assert np.isnan(ys[0][1, :, 2, 1]).all() and np.isnan(ys[0][0, :, 1, 3]).all()
    assert ys[1][0, 0, 1, 3] == np.inf and ys[1][0, 0, 3, 0] == -np.inf
    assert normexport.compare(ys, expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels,size", [(2, 64), (64, 64), (700, 9)])
def test_pono_large_mean_is_stable(path, channels, size, library):
    x = rand((1, channels, size, size), "float32", 3, scale=1e-2, offset=1e3)
    x[:, 0] += 5e-2                                    # an outlying first channel
    close(run(pono_model(4), {"X": x}, path), pono_ref_of(x), "float32")


@pytest.mark.parametrize("path", PATHS)
def test_pono_empty_batch(path, library):
    ys = run(pono_model(4), {"X": rand((0, 6, 4, 4), "float32", 0)}, path)
    assert [y.shape for y in ys] == [(0, 6, 4, 4), (0, 1, 4, 4), (0, 1, 4, 4)]


def test_pono_unbiased_one_channel_is_refused(library):
    with pytest.raises(Exception, match=r"PositionalNorm.*unbiased.*C >= 2.*C=1"):
        run(pono_model(4), {"X": rand((2, 1, 4, 4), "float32", 0)}, "native")


def test_pono_rank_below_three_is_refused(library):
    with pytest.raises(Exception, match="PositionalNorm.*rank >= 3"):
        run(pono_model(2), {"X": rand((2, 4), "float32", 0)}, "native")


@pytest.mark.parametrize("attrs,match", [({"epsilon": -1.0}, "epsilon"), ({"unbiased": 2}, "unbiased")])
def test_pono_bad_attributes_are_refused(attrs, match, library):
    with pytest.raises(Exception, match=f"PositionalNorm.*{match}"):
        run(pono_model(4, **attrs), {"X": rand((1, 3, 4, 4), "float32", 0)}, "native")
