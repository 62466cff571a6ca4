"""The ``normexport::SPADE`` and ``normexport::SwitchableNorm`` op contracts on hand-built ONNX
graphs (no torch in the loop): the native kernels and the ONNX function bodies against the float64
references, edge cases (extreme logits, NaN/Inf, empty batch, large mean), thread-count
independence, and errors naming the op and the mismatch."""

import os

import numpy as np
import pytest
from onnx import helper

import normexport
from normexport import registry
from normexport.export import attach_functions
from normexport.reference import style as style_ref

PATHS = ["native", "function"]
DTYPES = ["float32", "float16", "float64"]
NP = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
TOL = dict(registry.DEFAULT_TOLERANCES) | {"float64": registry.Tolerance(1e-12, 1e-12)}


def op_model(op_type, inputs, dtype="float32", opset=20, **attrs):
    """One normexport node; ``inputs`` maps each input name to its rank (dims symbolic)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(NP[dtype]))
    vis = [helper.make_tensor_value_info(n, elem, [f"{n}_{i}" for i in range(r)]) for n, r in inputs.items()]
    node = helper.make_node(op_type, list(inputs), ["Y"], domain="normexport", name=f"{op_type}_node", **attrs)
    graph = helper.make_graph([node], op_type, vis, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    assert attach_functions(model) == [op_type]
    return model


def run(model, feeds, path, threads=0):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = normexport.session(model, ["CPUExecutionProvider"], use_library=(path == "native"), sess_options=so)
    return s.run(None, feeds)[0]


def rand(shape, dtype, seed, scale=2.0, offset=0.5):
    r = np.random.default_rng(seed)
    return (r.standard_normal(shape) * scale + offset).astype(NP[dtype])


def positive(n, dtype, seed):
    return (0.5 + np.random.default_rng(seed).random(n)).astype(NP[dtype])


def f64(feeds):
    return {k: v.astype(np.float64) for k, v in feeds.items()}


def assert_close(y, expected, dtype, label=""):
    assert y.dtype == NP[dtype]
    result = normexport.compare([y], [expected], tolerance=TOL[dtype], label=label)
    assert result, str(result)


def raises_naming(model, feeds, *fragments):
    with pytest.raises(Exception) as info:
        run(model, feeds, "native")
    msg = str(info.value)
    assert all(f in msg for f in fragments), msg


# ---- SPADE ----------------------------------------------------------------------------------

def spade_model(rank, dtype="float32", **attrs):
    return op_model("SPADE", {"X": rank, "gamma_map": rank, "beta_map": rank, "running_mean": 1,
                              "running_var": 1}, dtype=dtype, **attrs)


def spade_feeds(shape, dtype, seed=0, scale=2.0, offset=0.5):
    c = shape[1]
    return {"X": rand(shape, dtype, seed, scale, offset), "gamma_map": rand(shape, dtype, seed + 1, 0.5, 0.0),
            "beta_map": rand(shape, dtype, seed + 2, 0.5, 0.0),
            "running_mean": rand(c, dtype, seed + 3, 0.4, 0.5), "running_var": positive(c, dtype, seed + 4) * 4}


def spade_reference(f, mode, eps=1e-5):
    p, eps = f64(f), float(np.float32(eps))      # the attribute is a float32
    with np.errstate(invalid="ignore", divide="ignore"):
        x_hat = (style_ref.batch_norm_with(p["X"], p["running_mean"], p["running_var"], eps) if mode == 0
                 else style_ref.instance_norm(p["X"], eps))
        return x_hat * (1 + p["gamma_map"]) + p["beta_map"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 17), (4, 6, 5, 7), (2, 3, 3, 4, 5), (2, 1, 1, 1), (1, 2, 150, 151)])
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_contract(path, dtype, shape, mode, library):
    f = spade_feeds(shape, dtype, seed=len(shape))
    y = run(spade_model(len(shape), dtype, epsilon=1e-4, mode=mode), f, path)
    assert_close(y, spade_reference(f, mode, 1e-4), dtype)


@pytest.mark.parametrize("mode", [0, 1])
def test_spade_threads_give_identical_results(mode, library):
    f = spade_feeds((4, 8, 64, 65), "float32", seed=5)     # several tasks, planes split in mode 0
    m = spade_model(4, mode=mode)
    ys = [run(m, f, "native", threads=t) for t in (1, 2, 4)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_nan_and_inf_propagate(path, mode, library):
    f = spade_feeds((2, 3, 4, 4), "float32", seed=2)
    f["X"][0, 1, 2, 2] = np.nan
    f["X"][1, 2, 0, 0] = np.inf
    f["gamma_map"][1, 0, 0, 0] = np.nan
    f["beta_map"][0, 0, 1, 1] = -np.inf
    y = run(spade_model(4, mode=mode), f, path)
    expected = spade_reference(f, mode)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    assert_close(y, expected, "float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_empty_batch(path, mode, library):
    y = run(spade_model(4, mode=mode), spade_feeds((0, 3, 4, 4), "float32"), path)
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", [0, 1])
def test_spade_large_mean_is_stable(path, mode, library):
    f = spade_feeds((1, 2, 256, 256), "float32", seed=3, scale=1e-2, offset=1e3)
    f["running_mean"] = np.full(2, 1e3, np.float32)
    f["running_var"] = np.full(2, 1e-4, np.float32)
    assert_close(run(spade_model(4, mode=mode), f, path), spade_reference(f, mode), "float32")


def test_spade_map_shape_mismatch_names_op_and_shapes(library):
    f = spade_feeds((2, 3, 4, 4), "float32")
    f["beta_map"] = f["beta_map"].reshape(2, 3, 16)
    m = op_model("SPADE", {"X": 4, "gamma_map": 4, "beta_map": 3, "running_mean": 1, "running_var": 1})
    raises_naming(m, f, "SPADE", "beta_map", "[2,3,16]", "[2,3,4,4]")


@pytest.mark.parametrize("mode", [0, 1])
def test_spade_running_stat_count_names_op_and_mismatch(mode, library):
    f = spade_feeds((2, 16, 5, 7), "float32")
    f["running_var"] = f["running_var"][:8]
    raises_naming(spade_model(4, mode=mode), f, "SPADE", "running_var", "8", "16")


def test_spade_rank_below_three_is_refused(library):
    f = spade_feeds((2, 3, 4), "float32")
    f = f | {k: f[k][:, :, 0] for k in ("X", "gamma_map", "beta_map")}
    raises_naming(spade_model(2), f, "SPADE", "rank")


@pytest.mark.parametrize("attrs,match", [({"mode": 2}, "mode"), ({"epsilon": -1.0}, "epsilon")])
def test_spade_bad_attributes_are_refused(attrs, match, library):
    raises_naming(spade_model(4, **attrs), spade_feeds((1, 3, 4, 4), "float32"), "SPADE", match)


# ---- SwitchableNorm -------------------------------------------------------------------------

def sn_branches(rank, using_bn):
    return (("in",) if rank > 2 else ()) + ("ln",) + (("bn",) if using_bn else ())


def sn_model(rank, dtype="float32", **attrs):
    return op_model("SwitchableNorm", {"X": rank, "scale": 1, "bias": 1, "running_mean": 1, "running_var": 1,
                                       "mean_weight": 1, "var_weight": 1}, dtype=dtype, **attrs)


def sn_feeds(shape, using_bn, dtype, seed=0, scale=2.0, offset=0.5):
    c, k = shape[1], len(sn_branches(len(shape), using_bn))
    r = np.random.default_rng(seed)
    d = NP[dtype]
    return {"X": rand(shape, dtype, seed, scale, offset), "scale": positive(c, dtype, seed + 1),
            "bias": rand(c, dtype, seed + 2, 0.3, 0.0),
            "running_mean": rand(c, dtype, seed + 3, 0.4, 0.5), "running_var": positive(c, dtype, seed + 4) * 3,
            "mean_weight": r.standard_normal(k).astype(d), "var_weight": r.standard_normal(k).astype(d)}


def sn_reference(f, using_bn, eps=1e-5):
    p, eps = f64(f), float(np.float32(eps))      # the attribute is a float32
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y, _ = style_ref.switchable_norm(p["X"], p["scale"], p["bias"], p["mean_weight"], p["var_weight"], eps,
                                         sn_branches(p["X"].ndim, using_bn), False,
                                         running_mean=p["running_mean"], running_var=p["running_var"])
    return y


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 11), (4, 6, 5, 7), (2, 6, 3, 4, 5), (1, 3, 130, 131),
                                   (3, 6, 1, 1)])   # one-element planes with an IN branch
@pytest.mark.parametrize("using_bn", [1, 0])
def test_sn_contract(path, dtype, shape, using_bn, library):
    f = sn_feeds(shape, using_bn, dtype, seed=len(shape))
    y = run(sn_model(len(shape), dtype, epsilon=1e-3, using_bn=using_bn), f, path)
    assert_close(y, sn_reference(f, using_bn, 1e-3), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sn_plane_above_the_cache_budget(dtype, library):
    """Planes bigger than a task's L2 budget (2 MiB at most) are written tail first."""
    f = sn_feeds((1, 2, 700, 1000), 1, dtype, seed=6)
    y = run(sn_model(4, dtype, epsilon=1e-3, using_bn=1), f, "native")
    assert_close(y, sn_reference(f, 1, 1e-3), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("using_bn", [1, 0])
def test_sn_batched_equal_one_by_one(dtype, using_bn, library):
    """Many samples: one task per sample (statistics, mix, apply); one sample: the phases spread
    over the threads. Both must give the reference and the same bits."""
    cpus = min(os.cpu_count() or 1, 16)
    n = 4 * cpus + 1
    f = sn_feeds((n, 8, 40, 50), using_bn, dtype, seed=3)
    m = sn_model(4, dtype, epsilon=1e-3, using_bn=using_bn)
    y = run(m, f, "native")
    assert_close(y, sn_reference(f, using_bn, 1e-3), dtype)
    for i in (0, n - 1):
        np.testing.assert_array_equal(run(m, dict(f, X=f["X"][i:i + 1]), "native"), y[i:i + 1])


@pytest.mark.parametrize("shape", [(None, 6, 9, 10), (None, 70)])
def test_sn_many_samples_per_task(shape, library):
    """Enough samples that a task runs several in a row, each with its own statistics in the task's
    scratch (and the next one prefetched), or, rank 2, the scratch-free one-element-plane path:
    the reference, and the same bits as one sample at a time."""
    cpus = min(os.cpu_count() or 1, 16)
    n = 40 * cpus + 3
    f = sn_feeds((n, *shape[1:]), 1, "float32", seed=9)
    m = sn_model(len(shape), "float32", epsilon=1e-3, using_bn=1)
    y = run(m, f, "native")
    assert_close(y, sn_reference(f, 1, 1e-3), "float32")
    for i in (0, 1, n // 2, n - 1):
        np.testing.assert_array_equal(run(m, dict(f, X=f["X"][i:i + 1]), "native"), y[i:i + 1])


def test_sn_several_waves(library):
    """Few, big samples: the phases run over all threads in waves of samples (16 MiB of X), the
    per-plane scratch reused wave after wave."""
    f = sn_feeds((3, 4, 500, 750), 1, "float32", seed=10)   # 6 MB a sample: waves of 2, then 1
    m = sn_model(4, "float32", epsilon=1e-3, using_bn=1)
    y = run(m, f, "native")
    assert_close(y, sn_reference(f, 1, 1e-3), "float32")
    np.testing.assert_array_equal(run(m, dict(f, X=f["X"][2:3]), "native"), y[2:3])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("using_bn", [1, 0])
@pytest.mark.parametrize("logit", [60.0, 1000.0])
def test_sn_extreme_logits_select_one_branch(path, rank, using_bn, logit, library):
    """A dominant logit selects IN, LN or BN alone (1000: the others' weights underflow to 0)."""
    shape = (3, 6, 5, 7)[:rank]
    f = sn_feeds(shape, using_bn, "float32", seed=4)
    m = sn_model(rank, using_bn=using_bn)
    for i, branch in enumerate(sn_branches(rank, using_bn)):
        logits = np.full(len(f["mean_weight"]), -logit, np.float32)
        logits[i] = logit
        g = f | {"mean_weight": logits, "var_weight": logits[::-1].copy()}
        assert_close(run(m, g, path), sn_reference(g, using_bn), "float32", branch)


@pytest.mark.parametrize("using_bn", [1, 0])
@pytest.mark.parametrize("shape", [(256, 300), (3, 16, 33, 35)])     # several tasks per phase
def test_sn_threads_give_identical_results(using_bn, shape, library):
    f = sn_feeds(shape, using_bn, "float32", seed=5)
    m = sn_model(len(shape), using_bn=using_bn)
    ys = [run(m, f, "native", threads=t) for t in (1, 2, 4)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("using_bn", [1, 0])
@pytest.mark.parametrize("rank", [2, 4])
def test_sn_nan_and_inf_propagate(path, using_bn, rank, library):
    shape = (3, 6, 4, 4)[:rank]
    f = sn_feeds(shape, using_bn, "float32", seed=5)
    f["X"][(0, 2) + (1,) * (rank - 2)] = np.nan
    f["X"][(1, 3) + (0,) * (rank - 2)] = np.inf
    y = run(sn_model(rank, using_bn=using_bn), f, path)
    expected = sn_reference(f, using_bn)
    assert np.isnan(y[0]).all() and np.isnan(y[1]).all() and np.isfinite(y[2]).all()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert_close(y, expected, "float32")


@pytest.mark.parametrize("path", PATHS)
def test_sn_ignores_running_stats_without_bn(path, library):
    f = sn_feeds((2, 6, 4, 4), 0, "float32", seed=6)
    y = run(sn_model(4, using_bn=0), f | {"running_mean": np.full(6, np.nan, np.float32),
                                          "running_var": np.full(6, np.inf, np.float32)}, path)
    assert_close(y, sn_reference(f, 0), "float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(0, 6), (0, 6, 4, 4)])
def test_sn_empty_batch(path, shape, library):
    y = run(sn_model(len(shape)), sn_feeds(shape, 1, "float32"), path)
    assert y.shape == shape and y.dtype == np.float32


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("using_bn", [1, 0])
@pytest.mark.parametrize("shape", [(1, 2, 256, 256), (4, 300)])
def test_sn_large_mean_is_stable(path, using_bn, shape, library):
    f = sn_feeds(shape, using_bn, "float32", seed=3, scale=1e-2, offset=1e3)
    f["running_mean"] = np.full(shape[1], 1e3, np.float32)
    f["running_var"] = np.full(shape[1], 1e-4, np.float32)
    assert_close(run(sn_model(len(shape), using_bn=using_bn), f, path), sn_reference(f, using_bn), "float32")


@pytest.mark.parametrize("name", ["scale", "bias", "running_mean", "running_var"])
def test_sn_channel_count_names_op_and_mismatch(name, library):
    f = sn_feeds((2, 16, 5, 7), 1, "float32")
    f[name] = f[name][:8]
    raises_naming(sn_model(4), f, "SwitchableNorm", name, "8", "16")


@pytest.mark.parametrize("rank,using_bn,k", [(4, 0, 3), (4, 1, 2), (2, 1, 3), (2, 0, 2)])
def test_sn_branch_count_names_op_and_mismatch(rank, using_bn, k, library):
    f = sn_feeds((2, 6, 4, 4)[:rank], using_bn, "float32")
    f["mean_weight"] = np.zeros(k, np.float32)
    expected = len(sn_branches(rank, using_bn))
    raises_naming(sn_model(rank, using_bn=using_bn), f, "SwitchableNorm", "mean_weight", str(k), str(expected),
                  f"rank {rank}")


def test_sn_rank_below_two_is_refused(library):
    f = sn_feeds((2, 6), 1, "float32")
    f["X"] = f["X"][:, 0].copy()
    raises_naming(sn_model(1), f, "SwitchableNorm", "rank")


@pytest.mark.parametrize("attrs,match", [({"using_bn": 2}, "using_bn"), ({"epsilon": float("nan")}, "epsilon")])
def test_sn_bad_attributes_are_refused(attrs, match, library):
    raises_naming(sn_model(4, **attrs), sn_feeds((1, 3, 4, 4), 1, "float32"), "SwitchableNorm", match)


# ---- which path served the node ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_nodes_run_on_native_kernels(dtype, library):
    cases = [("SPADE", spade_model(4, dtype, mode=1), spade_feeds((2, 3, 4, 4), dtype)),
             ("SwitchableNorm", sn_model(4, dtype), sn_feeds((2, 3, 4, 4), 1, dtype))]
    for op_type, model, feeds in cases:
        served = normexport.served_by(model, feeds, providers=["CPUExecutionProvider"])
        assert served[(op_type, "CPUExecutionProvider")] == 1, served
        assert normexport.served_by(model, feeds, providers=["CPUExecutionProvider"],
                                    use_library=False)[(op_type, "CPUExecutionProvider")] == 0
