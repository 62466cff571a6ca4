"""The GroupNorm, SwitchableNorm, PositionalNorm, AdaIN and SPADE op contracts on hand-built
ONNX graphs, with the op library registered (the native kernels, where the registry lists one)
and without it (the ONNX function bodies), against the float64 references; shape inference
through the bodies; the layers' variants through the exporter. The kernel-specific edge cases
are in test_kernels_<op>.py."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import normexport
from normexport import registry
from normexport.export import ExportError, attach_functions
from normexport.nn import adain, pono, spade, switchable
from normexport.reference import pono as pono_ref
from normexport.reference import standard
from normexport.reference import style as style_ref

from conftest import NP_DTYPES

PATHS = ["native", "function"]       # native: library registered; function: without it
DTYPES = ["float32", "float16"]
TOL = registry.DEFAULT_TOLERANCES


def op_model(op_type, inputs, outputs=("Y",), dtype="float32", opset=20, **attrs):
    """One normexport node; ``inputs`` maps each input name to its rank (dims symbolic)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    vis = [helper.make_tensor_value_info(n, elem, [f"{n}_{i}" for i in range(r)]) for n, r in inputs.items()]
    node = helper.make_node(op_type, list(inputs), list(outputs), domain="normexport",
                            name=f"{op_type}_node", **attrs)
    graph = helper.make_graph([node], op_type, vis, [helper.make_tensor_value_info(o, elem, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    assert attach_functions(model) == [op_type]
    return model


def run(model, feeds, path):
    sess = normexport.session(model, ["CPUExecutionProvider"], use_library=(path == "native"))
    return sess.run(None, feeds)


def rand(shape, dtype, seed, scale=2.0, offset=0.5):
    r = np.random.default_rng(seed)
    return (r.standard_normal(shape) * scale + offset).astype(NP_DTYPES[dtype])


def positive(n, dtype, seed):
    return (0.5 + np.random.default_rng(seed).random(n)).astype(NP_DTYPES[dtype])


def f64(feeds):
    return {k: v.astype(np.float64) for k, v in feeds.items()}


def assert_close(actual, expected, dtype, label=""):
    result = normexport.compare(list(actual), list(expected), tolerance=TOL[dtype], label=label)
    assert result, str(result)
    assert all(a.dtype == NP_DTYPES[dtype] for a in actual)


# ---- GroupNorm ------------------------------------------------------------------------------

def gn_feeds(shape, dtype, seed=0):
    c = shape[1]
    return {"X": rand(shape, dtype, seed), "scale": positive(c, dtype, seed + 1),
            "bias": rand(c, dtype, seed + 2, 0.3, 0.0)}


def gn_reference(f, groups, eps, activation):
    p = f64(f)
    y = standard.group_norm(p["X"], groups, p["scale"], p["bias"], eps)
    return {0: y, 1: np.maximum(y, 0.0), 2: y / (1.0 + np.exp(-y))}[activation]


def gn_model(rank, dtype="float32", **attrs):
    return op_model("GroupNorm", {"X": rank, "scale": 1, "bias": 1}, dtype=dtype, **attrs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((5, 6), 2), ((2, 6, 17), 6), ((4, 6, 5, 7), 3),
                                          ((2, 6, 3, 4, 5), 1), ((1, 8, 9, 9), 4)])
@pytest.mark.parametrize("activation", [0, 1, 2])
def test_groupnorm(path, dtype, shape, groups, activation):
    f = gn_feeds(shape, dtype, seed=len(shape) + groups)
    ys = run(gn_model(len(shape), dtype, num_groups=groups, epsilon=1e-4, activation=activation), f, path)
    assert_close(ys, [gn_reference(f, groups, 1e-4, activation)], dtype)


def test_groupnorm_attribute_defaults():
    f = gn_feeds((2, 6, 4, 4), "float32")
    ys = run(gn_model(4, num_groups=2), f, "function")     # epsilon 1e-5, no activation
    assert_close(ys, [gn_reference(f, 2, 1e-5, 0)], "float32")


@pytest.mark.parametrize("path", PATHS)
def test_groupnorm_nan_stays_in_its_group(path):
    f = gn_feeds((2, 6, 4, 4), "float32", seed=3)
    f["X"][0, 3, 1, 2] = np.nan
    (y,) = run(gn_model(4, num_groups=3), f, path)
    assert np.isnan(y[0, 2:4]).all() and np.isfinite(y[0, [0, 1, 4, 5]]).all() and np.isfinite(y[1]).all()
    assert_close([y], [gn_reference(f, 3, 1e-5, 0)], "float32")


@pytest.mark.parametrize("path", PATHS)
def test_groupnorm_empty_batch(path):
    (y,) = run(gn_model(4, num_groups=3), gn_feeds((0, 6, 4, 4), "float32"), path)
    assert y.shape == (0, 6, 4, 4) and y.dtype == np.float32


@pytest.mark.parametrize("bad", ["groups", "zero_groups", "scale"])
def test_groupnorm_bad_shapes_fail(bad):
    f = gn_feeds((2, 6, 4, 4), "float32")
    if bad == "scale":
        f["scale"] = f["scale"][:1]      # would broadcast silently: the body's Reshape refuses it
    with pytest.raises(Exception, match="cannot be reshaped"):
        run(gn_model(4, num_groups={"groups": 4, "zero_groups": 0, "scale": 3}[bad]), f, "function")


# ---- SwitchableNorm -------------------------------------------------------------------------

def sn_branches(rank, using_bn):
    return (("in",) if rank > 2 else ()) + ("ln",) + (("bn",) if using_bn else ())


def sn_feeds(shape, using_bn, dtype, seed=0):
    c, k = shape[1], len(sn_branches(len(shape), using_bn))
    r = np.random.default_rng(seed)
    d = NP_DTYPES[dtype]
    return {"X": rand(shape, dtype, seed), "scale": positive(c, dtype, seed + 1),
            "bias": rand(c, dtype, seed + 2, 0.3, 0.0),
            "running_mean": rand(c, dtype, seed + 3, 0.4, 0.5), "running_var": positive(c, dtype, seed + 4) * 3,
            "mean_weight": r.standard_normal(k).astype(d), "var_weight": r.standard_normal(k).astype(d)}


def sn_reference(f, using_bn, eps=1e-5):
    p = f64(f)
    y, _ = style_ref.switchable_norm(p["X"], p["scale"], p["bias"], p["mean_weight"], p["var_weight"],
                                     eps, sn_branches(p["X"].ndim, using_bn), False,
                                     running_mean=p["running_mean"], running_var=p["running_var"])
    return y


def sn_model(rank, dtype="float32", **attrs):
    return op_model("SwitchableNorm", {"X": rank, "scale": 1, "bias": 1, "running_mean": 1,
                                       "running_var": 1, "mean_weight": 1, "var_weight": 1},
                    dtype=dtype, **attrs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 11), (4, 6, 5, 7), (2, 6, 3, 4, 5)])
@pytest.mark.parametrize("using_bn", [1, 0])
def test_switchable_norm(path, dtype, shape, using_bn):
    f = sn_feeds(shape, using_bn, dtype, seed=len(shape))
    ys = run(sn_model(len(shape), dtype, epsilon=1e-3, using_bn=using_bn), f, path)
    assert_close(ys, [sn_reference(f, using_bn, 1e-3)], dtype)


@pytest.mark.parametrize("using_bn", [1, 0])
def test_switchable_norm_softmax_extremes_are_in_ln_bn(using_bn):
    """A dominant logit selects one branch: IN, LN or BN alone."""
    f = sn_feeds((3, 6, 5, 7), using_bn, "float32", seed=4)
    model = sn_model(4, using_bn=using_bn)
    p = f64(f)
    expected = {"in": style_ref.instance_norm(p["X"], 1e-5), "ln": style_ref.layer_norm(p["X"], 1e-5),
                "bn": style_ref.batch_norm_with(p["X"], p["running_mean"], p["running_var"], 1e-5)}
    affine = p["scale"].reshape(1, -1, 1, 1), p["bias"].reshape(1, -1, 1, 1)
    for i, branch in enumerate(sn_branches(4, using_bn)):
        logits = np.full(len(f["mean_weight"]), -60.0, np.float32)
        logits[i] = 60.0
        ys = run(model, f | {"mean_weight": logits, "var_weight": logits}, "function")
        assert_close(ys, [expected[branch] * affine[0] + affine[1]], "float32", branch)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("using_bn", [1, 0])
def test_switchable_norm_nan_stays_in_its_sample(path, using_bn):
    f = sn_feeds((2, 6, 4, 4), using_bn, "float32", seed=5)
    f["X"][0, 2, 1, 1] = np.nan
    (y,) = run(sn_model(4, using_bn=using_bn), f, path)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()     # LN statistics mix the channels
    assert_close([y], [sn_reference(f, using_bn)], "float32")


def test_switchable_norm_ignores_running_stats_without_bn():
    f = sn_feeds((2, 6, 4, 4), 0, "float32", seed=6)
    (y,) = run(sn_model(4, using_bn=0), f | {"running_mean": np.full(6, np.nan, np.float32),
                                             "running_var": np.full(6, np.inf, np.float32)}, "function")
    assert_close([y], [sn_reference(f, 0)], "float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(0, 6), (0, 6, 4, 4)])
def test_switchable_norm_empty_batch(path, shape):
    (y,) = run(sn_model(len(shape)), sn_feeds(shape, 1, "float32"), path)
    assert y.shape == shape and y.dtype == np.float32


def test_switchable_norm_wrong_branch_count_fails():
    f = sn_feeds((2, 6, 4, 4), 1, "float32")           # 3 logits (IN, LN, BN) ...
    with pytest.raises(Exception, match="cannot be reshaped"):
        run(sn_model(4, using_bn=0), f, "function")      # ... but only IN, LN declared


# ---- PositionalNorm -------------------------------------------------------------------------

def pono_model(rank, dtype="float32", **attrs):
    return op_model("PositionalNorm", {"X": rank}, outputs=("Y", "Mean", "Std"), dtype=dtype, **attrs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 17), (4, 6, 5, 7), (2, 3, 3, 4, 5), (2, 2, 3, 3)])
@pytest.mark.parametrize("unbiased", [1, 0])
def test_positional_norm(path, dtype, shape, unbiased):
    x = rand(shape, dtype, seed=len(shape))
    ys = run(pono_model(len(shape), dtype, epsilon=1e-4, unbiased=unbiased), {"X": x}, path)
    expected = pono_ref.positional_norm(x.astype(np.float64), 1e-4, bool(unbiased))
    assert [y.shape for y in ys] == [shape, (shape[0], 1, *shape[2:]), (shape[0], 1, *shape[2:])]
    assert_close(ys, expected, dtype)


def test_positional_norm_attribute_defaults():
    x = rand((2, 6, 4, 4), "float32", 1)
    ys = run(pono_model(4), {"X": x}, "function")            # epsilon 1e-5, unbiased
    assert_close(ys, pono_ref.positional_norm(x.astype(np.float64), 1e-5, True), "float32")


@pytest.mark.parametrize("path", PATHS)
def test_positional_norm_nan_stays_at_its_position(path):
    x = rand((2, 6, 4, 4), "float32", 2)
    x[1, 3, 2, 1] = np.nan
    ys = run(pono_model(4), {"X": x}, path)
    for y in ys:
        assert np.isnan(y[1, :, 2, 1]).all() and np.isfinite(y[0]).all()
        assert np.isfinite(np.delete(y[1].reshape(y.shape[1], -1), 2 * 4 + 1, axis=1)).all()
    assert_close(ys, pono_ref.positional_norm(x.astype(np.float64)), "float32")


@pytest.mark.parametrize("path", PATHS)
def test_positional_norm_empty_batch(path):
    ys = run(pono_model(4), {"X": rand((0, 6, 4, 4), "float32", 0)}, path)
    assert [y.shape for y in ys] == [(0, 6, 4, 4), (0, 1, 4, 4), (0, 1, 4, 4)]


# ---- AdaIN ----------------------------------------------------------------------------------

def adain_model(rank, dtype="float32", **attrs):
    return op_model("AdaIN", {"content": rank, "style": rank}, dtype=dtype, **attrs)


def adain_feeds(shape, style_spatial, dtype, seed=0):
    style = rand((*shape[:2], *style_spatial), dtype, seed + 1, 0.7, -0.7)
    return {"content": rand(shape, dtype, seed), "style": style}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,style_spatial", [((3, 5, 17), (9,)), ((4, 6, 5, 7), (7, 13)),
                                                 ((2, 3, 3, 4, 5), (2, 2, 6)), ((2, 4, 6, 6), (6, 6))])
@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.0])
def test_adain(path, dtype, shape, style_spatial, alpha):
    f = adain_feeds(shape, style_spatial, dtype, seed=len(shape))
    ys = run(adain_model(len(shape), dtype, epsilon=1e-4, alpha=alpha), f, path)
    p = f64(f)
    assert_close(ys, [style_ref.adaptive_instance_norm(p["content"], p["style"], 1e-4, alpha)], dtype)


def test_adain_attribute_defaults_and_identity():
    f = adain_feeds((2, 4, 6, 6), (3, 3), "float32")
    (y,) = run(adain_model(4), f, "function")                  # epsilon 1e-5, alpha 1
    p = f64(f)
    assert_close([y], [style_ref.adaptive_instance_norm(p["content"], p["style"], 1e-5, 1.0)], "float32")
    (same,) = run(adain_model(4), {"content": f["content"], "style": f["content"]}, "function")
    assert_close([same], [p["content"]], "float32")            # AdaIN(x, x) = x


@pytest.mark.parametrize("path", PATHS)
def test_adain_nan_stays_in_its_plane(path):
    f = adain_feeds((2, 4, 5, 5), (3, 3), "float32", seed=3)
    f["content"][0, 1, 2, 2] = np.nan
    f["style"][1, 3, 0, 1] = np.nan
    (y,) = run(adain_model(4), f, path)
    nan_planes = {(0, 1), (1, 3)}
    for n in range(2):
        for c in range(4):
            assert (np.isnan(y[n, c]).all() if (n, c) in nan_planes else np.isfinite(y[n, c]).all()), (n, c)
    p = f64(f)
    assert_close([y], [style_ref.adaptive_instance_norm(p["content"], p["style"], 1e-5)], "float32")


@pytest.mark.parametrize("path", PATHS)
def test_adain_empty_batch(path):
    (y,) = run(adain_model(4), adain_feeds((0, 4, 5, 5), (3, 3), "float32"), path)
    assert y.shape == (0, 4, 5, 5)


# ---- SPADE (normalize + modulate) -----------------------------------------------------------

def spade_model(rank, dtype="float32", **attrs):
    return op_model("SPADE", {"X": rank, "gamma_map": rank, "beta_map": rank, "running_mean": 1,
                              "running_var": 1}, dtype=dtype, **attrs)


def spade_feeds(shape, dtype, seed=0):
    c = shape[1]
    return {"X": rand(shape, dtype, seed), "gamma_map": rand(shape, dtype, seed + 1, 0.5, 0.0),
            "beta_map": rand(shape, dtype, seed + 2, 0.5, 0.0),
            "running_mean": rand(c, dtype, seed + 3, 0.4, 0.5), "running_var": positive(c, dtype, seed + 4) * 4}


def spade_reference(f, mode, eps=1e-5):
    p = f64(f)
    x_hat = (style_ref.batch_norm_with(p["X"], p["running_mean"], p["running_var"], eps) if mode == 0
             else style_ref.instance_norm(p["X"], eps))
    return x_hat * (1 + p["gamma_map"]) + p["beta_map"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 17), (4, 6, 5, 7), (2, 3, 3, 4, 5)])
@pytest.mark.parametrize("mode", [0, 1])
def test_spade(path, dtype, shape, mode):
    f = spade_feeds(shape, dtype, seed=len(shape))
    ys = run(spade_model(len(shape), dtype, epsilon=1e-4, mode=mode), f, path)
    assert_close(ys, [spade_reference(f, mode, 1e-4)], dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_nan_propagation(path, mode):
    f = spade_feeds((2, 3, 4, 4), "float32", seed=2)
    f["X"][0, 1, 2, 2] = np.nan
    f["gamma_map"][1, 0, 0, 0] = np.nan
    (y,) = run(spade_model(4, mode=mode), f, path)
    expect_nan = np.zeros(y.shape, bool)
    expect_nan[1, 0, 0, 0] = True
    if mode == 0:
        expect_nan[0, 1, 2, 2] = True        # running statistics: the element alone
    else:
        expect_nan[0, 1] = True              # instance statistics: its plane
    np.testing.assert_array_equal(np.isnan(y), expect_nan)
    assert_close([y], [spade_reference(f, mode)], "float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_empty_batch(path, mode):
    (y,) = run(spade_model(4, mode=mode), spade_feeds((0, 3, 4, 4), "float32"), path)
    assert y.shape == (0, 3, 4, 4)


def test_spade_map_of_another_size_fails():
    f = spade_feeds((2, 3, 4, 4), "float32")
    f["gamma_map"] = f["gamma_map"][:, :, :1, :1].copy()     # would broadcast: refused
    with pytest.raises(Exception, match="cannot be reshaped"):
        run(spade_model(4), f, "function")


# ---- shape inference through the bodies -----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op_type,inputs,outputs,attrs", [
    ("GroupNorm", {"X": [None, 6, 5, 7], "scale": [6], "bias": [6]}, {"Y": [None, 6, 5, 7]}, {"num_groups": 3}),
    ("SwitchableNorm", {"X": [None, 6, 5, 7], "scale": [6], "bias": [6], "running_mean": [6], "running_var": [6],
                        "mean_weight": [3], "var_weight": [3]}, {"Y": [None, 6, 5, 7]}, {}),
    ("PositionalNorm", {"X": [None, 6, 5, 7]},
     {"Y": [None, 6, 5, 7], "Mean": [None, 1, 5, 7], "Std": [None, 1, 5, 7]}, {}),
    ("AdaIN", {"content": [None, 6, 5, 7], "style": [None, 6, 3, 2]}, {"Y": [None, 6, 5, 7]}, {}),
    ("SPADE", {"X": [None, 6, 5, 7], "gamma_map": [None, 6, 5, 7], "beta_map": [None, 6, 5, 7],
               "running_mean": [6], "running_var": [6]}, {"Y": [None, 6, 5, 7]}, {"mode": 1}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_shape_inference_through_the_body(dtype, op_type, inputs, outputs, attrs):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    node = helper.make_node(op_type, list(inputs), list(outputs), domain="normexport", **attrs)
    graph = helper.make_graph(
        [node], op_type, [helper.make_tensor_value_info(n, elem, [d or "N" for d in s]) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    attach_functions(model)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    got = {o.name: (o.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
           for o in inferred.graph.output}
    assert got == {o: (elem, [d or "N" for d in s]) for o, s in outputs.items()}


# ---- the layers through the exporter --------------------------------------------------------

def test_two_groupnorms_share_one_function(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8),
                                torch.nn.Conv2d(8, 6, 3, stride=2), torch.nn.GroupNorm(3, 6, affine=False),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.normal_(0, 0.3)
    report = normexport.export(model, torch.randn(2, 3, 11, 9), tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    nodes = [n for n in proto.graph.node if n.domain == "normexport"]
    assert [n.op_type for n in nodes] == ["GroupNorm", "GroupNorm"]
    assert [(f.domain, f.name) for f in proto.functions] == [("normexport", "GroupNorm")]
    assert [next(a.i for a in n.attribute if a.name == "num_groups") for n in nodes] == [4, 3]
    assert [c.module for c in report.custom_nodes] == ["1", "3"]
    assert len({n.name for n in nodes}) == 2
    onnx.checker.check_model(proto, full_check=True)
    x = torch.randn(5, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    for path in PATHS:
        sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=(path == "native"))
        assert_close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()}), [expected], "float32", path)


def _variants():
    gen = torch.Generator().manual_seed(3)

    def sn(cls, using_bn):
        m = cls(6, using_bn=using_bn)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(0, 0.3, generator=gen)
            m.mean_weight.normal_(generator=gen)
            m.var_weight.normal_(generator=gen)
            if using_bn:
                m.running_mean.normal_(0.5, 0.4, generator=gen)
                m.running_var.uniform_(2.0, 6.0, generator=gen)
        return m

    def spade_instance():
        m = spade.SPADE(6, 3, norm="instance", hidden_features=4)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3, generator=gen)
        return m

    image = lambda n: torch.randn(n, 6, 5, 7, generator=gen) * 2 + 0.5  # noqa: E731
    segmap = lambda n: torch.nn.functional.one_hot(  # noqa: E731
        torch.randint(0, 3, (n, 3, 4), generator=gen), 3).permute(0, 3, 1, 2).float()
    return {
        "groupnorm_no_affine": (torch.nn.GroupNorm(2, 6, affine=False), lambda n: (image(n),)),
        "groupnorm_instance": (torch.nn.GroupNorm(6, 6), lambda n: (torch.randn(n, 6, 9, generator=gen),)),
        "switchable_2d_no_bn": (sn(switchable.SwitchableNorm2d, False), lambda n: (image(n),)),
        "switchable_1d": (sn(switchable.SwitchableNorm1d, True), lambda n: (torch.randn(n, 6, generator=gen),)),
        "switchable_1d_no_bn": (sn(switchable.SwitchableNorm1d, False), lambda n: (torch.randn(n, 6, generator=gen),)),
        "pono_biased_3d": (pono.PositionalNorm(unbiased=False), lambda n: (torch.randn(n, 5, 3, 4, 6, generator=gen),)),
        "adain_pure_1d": (adain.AdaIN(6), lambda n: (torch.randn(n, 6, 11, generator=gen),
                                                     torch.randn(n, 6, 8, generator=gen) * 0.5 - 1)),
        "spade_instance": (spade_instance(), lambda n: (image(n), segmap(n))),
    }


VARIANTS = _variants()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_layer_variant_exports_to_its_node(name, tmp_path):
    layer, make_inputs = VARIANTS[name]
    layer.eval()
    spec = registry.spec_for(layer)
    report = normexport.export(layer, make_inputs(2), tmp_path / "m.onnx")
    assert [c.op_type for c in report.custom_nodes] == [spec.export.op_type]
    inputs = tuple(t.numpy() for t in make_inputs(3))
    expected = spec.reference(layer, tuple(x.astype(np.float64) for x in inputs), False).outputs
    with torch.no_grad():
        torch_eval = layer(*(torch.from_numpy(x) for x in inputs))
    torch_eval = [t.numpy() for t in (torch_eval if isinstance(torch_eval, tuple) else (torch_eval,))]
    for path in PATHS:
        sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=(path == "native"))
        ys = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})
        assert_close(ys, expected, "float32", path)
        assert normexport.compare(ys, torch_eval), f"{path}: ORT vs torch eval"


def test_spade_batch_norm_without_running_stats_is_refused(tmp_path):
    layer = spade.SPADE(4, 3, hidden_features=4, track_running_stats=False).eval()
    x, seg = torch.randn(2, 4, 5, 7), torch.rand(2, 3, 3, 4)
    with pytest.raises(ExportError, match="batch statistics"):
        normexport.export(layer, (x, seg), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ---- function bodies at opsets 15-17 (graphs from older exporters) -------------------------

def _older_cases():
    """(op, model factory(opset), feeds, float64 reference outputs) for every normexport op."""
    from normexport.reference import frn as frn_ref
    gf = gn_feeds((2, 6, 5, 7), "float32", seed=3)
    sf = sn_feeds((3, 6, 4, 5), 1, "float32", seed=4)
    af = adain_feeds((2, 4, 6, 6), (5, 7), "float32", seed=5)
    pf = {"X": rand((2, 5, 4, 6), "float32", seed=6)}
    df = spade_feeds((2, 3, 4, 5), "float32", seed=7)
    ff = {"X": rand((2, 4, 5, 3), "float32", seed=8), "gamma": positive(4, "float32", 9),
          "beta": rand(4, "float32", 10, 0.3, 0.0), "tau": rand(4, "float32", 11, 0.3, 0.0)}
    fp = f64(ff)
    return {
        "GroupNorm": (lambda o: op_model("GroupNorm", {"X": 4, "scale": 1, "bias": 1}, opset=o,
                                         num_groups=3, epsilon=1e-4, activation=2),
                      gf, [gn_reference(gf, 3, 1e-4, 2)]),
        "SwitchableNorm": (lambda o: op_model("SwitchableNorm", {"X": 4, "scale": 1, "bias": 1, "running_mean": 1,
                                                                 "running_var": 1, "mean_weight": 1, "var_weight": 1},
                                              opset=o, epsilon=1e-3, using_bn=1),
                           sf, [sn_reference(sf, 1, 1e-3)]),
        "AdaIN": (lambda o: op_model("AdaIN", {"content": 4, "style": 4}, opset=o, epsilon=1e-4, alpha=0.75),
                  af, [style_ref.adaptive_instance_norm(f64(af)["content"], f64(af)["style"], 1e-4, 0.75)]),
        "PositionalNorm": (lambda o: op_model("PositionalNorm", {"X": 4}, outputs=("Y", "Mean", "Std"), opset=o,
                                              epsilon=1e-4, unbiased=1),
                           pf, list(pono_ref.positional_norm(f64(pf)["X"], 1e-4, True))),
        "SPADE": (lambda o: op_model("SPADE", {"X": 4, "gamma_map": 4, "beta_map": 4, "running_mean": 1,
                                               "running_var": 1}, opset=o, epsilon=1e-4, mode=1),
                  df, [spade_reference(df, 1, 1e-4)]),
        "FilterResponseNorm": (lambda o: op_model("FilterResponseNorm", {"X": 4, "gamma": 1, "beta": 1, "tau": 1},
                                                  opset=o, eps=1e-5, tlu=1),
                               ff, [frn_ref.filter_response_norm(fp["X"], fp["gamma"], fp["beta"], fp["tau"], 1e-5)]),
    }


@pytest.mark.parametrize("opset", [15, 16, 17])
@pytest.mark.parametrize("op_type", ["GroupNorm", "SwitchableNorm", "AdaIN", "PositionalNorm", "SPADE",
                                     "FilterResponseNorm"])
def test_function_bodies_at_older_opsets(op_type, opset):
    """Below opset 18 the bodies take Reduce* axes as an attribute: the model passes the full
    checker at that opset and stock ORT (no library) computes the contract."""
    factory, feeds, expected = _older_cases()[op_type]
    model = factory(opset)
    body = next(f for f in model.functions if f.name == op_type)
    assert [(o.domain, o.version) for o in body.opset_import] == [("", opset)]
    assert not any(n.op_type == "ReduceMean" and len(n.input) > 1 for n in body.node)
    for o in model.graph.output:           # the test graphs leave output shapes open: rank 4 here
        o.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_param=f"{o.name}_{i}")
                                            for i in range(4))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert inferred.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert_close(run(model, feeds, "function"), expected, "float32", label=f"{op_type} opset {opset}")


def test_function_body_below_opset_15_is_refused():
    with pytest.raises(ExportError, match="opset >= 15"):
        op_model("GroupNorm", {"X": 4, "scale": 1, "bias": 1}, opset=14, num_groups=2)
