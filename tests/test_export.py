"""Exported custom-op norms in ONNX Runtime, through the native kernel and through the ONNX
function fallback, against the float64 reference: norm x provider x dtype x path x batch."""

import re

import numpy as np
import onnx
import pytest
import torch

import normexport
from normexport import registry
from normexport.export import ExportError

from conftest import CUSTOM_SPECS, NP_DTYPES, PROVIDERS, TORCH_DTYPES

C = 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(spec, dtype):
        if (spec.name, dtype) not in cache:
            layer = spec.example(C, torch.Generator().manual_seed(7)).to(TORCH_DTYPES[dtype]).eval()
            x = tuple(t.to(TORCH_DTYPES[dtype]) for t in spec.inputs(layer, 2, torch.Generator().manual_seed(1)))
            path = tmp_path_factory.mktemp("export") / f"{spec.name}_{dtype}.onnx"
            report = normexport.export(layer, x, path)
            cache[spec.name, dtype] = (layer, path, report)
        return cache[spec.name, dtype]
    return get


def _inputs(spec, layer, n, dtype, seed=0):
    return tuple(t.numpy().astype(NP_DTYPES[dtype]) for t in spec.inputs(layer, n, torch.Generator().manual_seed(seed)))


def _feeds(sess, inputs):
    return {i.name: x for i, x in zip(sess.get_inputs(), inputs)}


@pytest.mark.parametrize("spec", CUSTOM_SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_export_writes_one_custom_node_with_function(spec, dtype, exported):
    _, path, report = exported(spec, dtype)
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.domain == "normexport"]
    assert [n.op_type for n in nodes] == [spec.export.op_type]
    assert [(f.domain, f.name) for f in model.functions] == [("normexport", spec.export.op_type)]
    assert {o.domain: o.version for o in model.opset_import}["normexport"] == 1
    assert "exported from layer" in nodes[0].doc_string
    assert [c.op_type for c in report.custom_nodes] == [spec.export.op_type]
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    layer = exported(spec, dtype)[0]
    # every output (PONO: y, mean, std) against the shapes of the reference's outputs
    x = spec.inputs(layer, 2, torch.Generator())
    expected = spec.reference(layer, tuple(t.double().numpy() for t in x), False).outputs
    assert len(inferred.graph.output) == len(expected)
    for value, e in zip(inferred.graph.output, expected):
        out = value.type.tensor_type
        assert out.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype])), value.name
        assert [d.dim_value for d in out.shape.dim][1:] == list(e.shape[1:]), value.name
        assert out.shape.dim[0].dim_param, value.name  # dynamic batch


@pytest.mark.parametrize("spec", CUSTOM_SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("path", ["native", "function"])
@pytest.mark.parametrize("n", [1, 8])
def test_parity(spec, provider, dtype, path, n, exported, library):
    layer, onnx_path, _ = exported(spec, dtype)
    inputs = _inputs(spec, layer, n, dtype, seed=n)
    sess = normexport.session(onnx_path, [provider], use_library=(path == "native"))
    feeds = _feeds(sess, inputs)
    ys = sess.run(None, feeds)
    assert all(y.dtype == NP_DTYPES[dtype] for y in ys)
    # the float64 reference sees exactly the values the graph sees (fp16-rounded params too)
    expected = spec.reference(layer, tuple(x.astype(np.float64) for x in inputs), False).outputs
    tol = spec.tolerances[dtype]
    result = normexport.compare(ys, expected, tolerance=tol, label=f"{path}/{provider}")
    assert result, str(result)
    if dtype == "float32":
        with torch.no_grad():
            torch_eval = layer(*(torch.from_numpy(x) for x in inputs))
        torch_eval = [t.numpy() for t in (torch_eval if isinstance(torch_eval, tuple) else (torch_eval,))]
        assert normexport.compare(ys, torch_eval, tolerance=tol), "ORT vs torch eval"

    served = normexport.served_by(onnx_path, feeds, providers=[provider],
                                  use_library=(path == "native"))
    ran_native = served[(spec.export.op_type, provider)] > 0
    has_kernel = dtype in spec.export.kernels.get(provider, ())
    assert ran_native == (path == "native" and has_kernel), served


def test_export_refuses_training_mode(tmp_path):
    layer = registry.REGISTRY["frn"].example(4, torch.Generator())
    with pytest.raises(ExportError, match="training mode.*model.eval"):
        normexport.export(torch.nn.Sequential(layer), torch.randn(2, 4, 3, 3), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_old_opset(tmp_path):
    layer = registry.REGISTRY["frn"].example(4, torch.Generator()).eval()
    with pytest.raises(ExportError, match="opset 17 is below 18"):
        normexport.export(layer, torch.randn(2, 4, 3, 3), tmp_path / "m.onnx", opset=17)


def test_export_without_custom_ops_is_standard_onnx(tmp_path):
    spec = registry.REGISTRY["frn"]
    layer = spec.example(C, torch.Generator().manual_seed(1)).eval()
    normexport.export(layer, spec.inputs(layer, 2, torch.Generator()), tmp_path / "m.onnx", custom_ops=False)
    model = onnx.load(tmp_path / "m.onnx")
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node) and not model.functions
    inputs = _inputs(spec, layer, 3, "float32")
    sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=False)
    assert normexport.compare(sess.run(None, _feeds(sess, inputs)),
                              spec.reference(layer, tuple(x.astype(np.float64) for x in inputs), False).outputs)


def test_export_failure_writes_nothing(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.export fails
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError):
        normexport.export(Bad().eval(), torch.randn(2, 3), target)
    assert target.read_bytes() == b"old"


def test_custom_node_names_its_layer(tmp_path):
    layer = registry.REGISTRY["frn"].example(4, torch.Generator())
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Sequential(layer)).eval()
    report = normexport.export(model, torch.randn(2, 3, 5, 5), tmp_path / "m.onnx")
    assert [(c.module, c.layer.rsplit(".", 1)[-1]) for c in report.custom_nodes] == [("1.0", "FilterResponseNorm2d")]
    node = next(n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.domain == "normexport")
    assert node.name == "1.0/FilterResponseNorm"  # kernel errors name the node, hence the layer


# ---- standard-op rules (LN, IN, LRN), conditional BN / IN forms, refusals, dynamic spatial ----

def _ops(path):
    return [n.op_type for n in onnx.load(path).graph.node]


def _ort_vs_torch(path, model, inputs):
    sess = normexport.session(path, ["CPUExecutionProvider"])
    ys = sess.run(None, _feeds(sess, [t.numpy() for t in inputs]))
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    result = normexport.compare(ys, [t.numpy() for t in expected])
    assert result, str(result)


def _in_tracked(cls=torch.nn.InstanceNorm2d):
    m = cls(4, affine=True, track_running_stats=True)
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(4) * 0.5)
        m.running_var.copy_(0.5 + torch.rand(4))
        m.weight.copy_(0.5 + torch.rand(4))
        m.bias.copy_(torch.randn(4) * 0.3)
    return m


STANDARD_CASES = {
    # name: (layer factory, input shape, the op types the graph must consist of)
    "layernorm": (lambda: torch.nn.LayerNorm((4, 5, 7)), (3, 4, 5, 7), {"LayerNormalization"}),
    "layernorm_last_dim": (lambda: torch.nn.LayerNorm(7, bias=False), (3, 6, 7), {"LayerNormalization"}),
    "instancenorm2d": (lambda: torch.nn.InstanceNorm2d(4, affine=True), (3, 4, 5, 7), {"InstanceNormalization"}),
    "instancenorm1d": (lambda: torch.nn.InstanceNorm1d(4), (3, 4, 9), {"InstanceNormalization"}),
    # running statistics: eval is a per-channel affine = BN eval, one BatchNormalization on x
    "instancenorm2d_running_stats": (_in_tracked, (3, 4, 5, 7), {"BatchNormalization"}),
    "instancenorm3d_running_stats": (lambda: _in_tracked(torch.nn.InstanceNorm3d), (3, 4, 5, 3, 2),
                                     {"BatchNormalization"}),
    "lrn_odd": (lambda: torch.nn.LocalResponseNorm(5, alpha=0.2, beta=0.75, k=1.5), (3, 7, 5, 6), {"LRN"}),
}


@pytest.mark.parametrize("name", list(STANDARD_CASES))
def test_standard_op_rules(name, tmp_path):
    make, shape, ops = STANDARD_CASES[name]
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(shape) * 2 + 0.5
    report = normexport.export(layer, x, tmp_path / "m.onnx")
    assert _ops(tmp_path / "m.onnx") == sorted(ops) and len(ops) == 1, _ops(tmp_path / "m.onnx")
    assert not report.custom_nodes and not report.notes
    spec = registry.spec_for(layer)
    assert set(_ops(tmp_path / "m.onnx")) <= set(spec.export.op_types)
    _ort_vs_torch(tmp_path / "m.onnx", layer, (torch.randn((2,) + shape[1:]) * 2 + 0.5,))


@pytest.mark.parametrize("size,shape,why", [(4, (3, 7, 5, 6), "even"), (3, (3, 7, 9), "rank 3")])
def test_lrn_stays_decomposed_where_onnx_lrn_differs(size, shape, why, tmp_path):
    """ONNX LRN's window equals torch's for odd sizes only (and ORT's LRN takes 4-D input only):
    never a wrong LRN node, the traced decomposition instead, with a note saying why."""
    layer = torch.nn.LocalResponseNorm(size, alpha=0.2, beta=0.75, k=1.5).eval()
    report = normexport.export(torch.nn.Sequential(layer).eval(), torch.randn(shape), tmp_path / "m.onnx")
    assert "LRN" not in _ops(tmp_path / "m.onnx")
    assert any(n.startswith("0 (LocalResponseNorm)") and why in n for n in report.notes), report.notes
    _ort_vs_torch(tmp_path / "m.onnx", layer, (torch.randn((2,) + shape[1:]) * 2,))


# conditional BN: the BN part is a constant scale/shift (running statistics folded into
# initializers by the exporter: Sub mean, Mul rsqrt(var + eps)); the per-sample affine is a
# Gather (class table) or the condition MLP (Gemm/Relu), then Mul/Add. Conditional IN:
# InstanceNormalization + Gather (style index) or MatMul (style mix) + Mul/Add.
_PER_SAMPLE = {"Mul", "Add", "Reshape"}
CONDITIONAL_CASES = {
    "conditional_bn": ({"Sub", "Gemm", "Relu"}, {"Gemm"}),
    "conditional_bn_embedding": ({"Sub", "Gather"}, {"Gather"}),
    "conditional_in": ({"InstanceNormalization", "Gather"}, {"InstanceNormalization", "Gather"}),
    "conditional_in_mix": ({"InstanceNormalization", "MatMul"}, {"InstanceNormalization", "MatMul"}),
}
_NEVER = {"BatchNormalization", "ReduceMean", "ReduceSum", "Sqrt", "Reciprocal", "Pow", "Div", "Tile",
          "Expand"}  # batch statistics / runtime rsqrt / torch's var_mean decomposition


@pytest.mark.parametrize("name", list(CONDITIONAL_CASES))
def test_conditional_norm_graph_form(name, tmp_path):
    extra, required = CONDITIONAL_CASES[name]
    spec = registry.REGISTRY[name.replace("_mix", "")]
    layer = spec.example(C, torch.Generator().manual_seed(3)).eval()
    inputs = spec.inputs(layer, 3, torch.Generator().manual_seed(4))
    if name.endswith("_mix"):  # style weights (N, num_styles): the paper's style interpolation
        inputs = (inputs[0], torch.rand(3, layer.num_styles, generator=torch.Generator().manual_seed(5)))
    normexport.export(layer, inputs, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert ops <= _PER_SAMPLE | extra, ops
    assert required <= ops and {"Mul", "Add"} <= ops, ops
    assert not ops & _NEVER, ops & _NEVER
    if spec.name.startswith("conditional_bn"):   # rsqrt(running_var + eps) is an initializer
        want = torch.rsqrt(layer.running_var + layer.eps).numpy()
        inits = [onnx.numpy_helper.to_array(i).ravel() for i in model.graph.initializer]
        assert any(a.shape == want.shape and np.allclose(a, want, rtol=1e-6) for a in inits)
    sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"])
    fresh = tuple(t[[2, 0, 1, 1]] for t in inputs)  # another batch (4) of the same kind
    ys = sess.run(None, _feeds(sess, [t.numpy() for t in fresh]))
    ref = spec.reference(layer, tuple(t.double().numpy() if t.is_floating_point() else t.numpy()
                                      for t in fresh), False).outputs
    assert normexport.compare(ys, ref, tolerance=spec.tolerances["float32"])
    _ort_vs_torch(tmp_path / "m.onnx", layer, fresh)


def _refused_cases():
    from normexport.nn import SPADE, ConditionalBatchNorm2d
    return {
        "bn": (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Sequential(
            torch.nn.BatchNorm2d(4, track_running_stats=False))), "1.0 (BatchNorm2d)", (torch.randn(2, 3, 5, 5),)),
        "syncbn": (torch.nn.Sequential(torch.nn.SyncBatchNorm(3, track_running_stats=False)),
                   "0 (SyncBatchNorm)", (torch.randn(2, 3, 5, 5),)),
        "conditional_bn": (ConditionalBatchNorm2d(3, 2, track_running_stats=False), "<root> (ConditionalBatchNorm2d)",
                           (torch.randn(2, 3, 5, 5), torch.randn(2, 2))),
        "spade": (SPADE(3, 2, hidden_features=4, track_running_stats=False), "<root> (SPADE)",
                  (torch.randn(2, 3, 5, 5), torch.rand(2, 2, 3, 3))),
    }


@pytest.mark.parametrize("name", ["bn", "syncbn", "conditional_bn", "spade"])
def test_export_refuses_batch_statistics_in_eval(name, tmp_path):
    """track_running_stats=False: eval normalises with batch statistics; refused, named, with
    what to do, nothing written (read from the registry's eval_batch_stats predicates)."""
    model, where, args = _refused_cases()[name]
    with pytest.raises(ExportError, match=rf"module {re.escape(where)}.*track_running_stats=False.*"
                                          rf"batch statistics.*recalibrate"):
        normexport.export(model.eval(), args, tmp_path / "m.onnx", fold=False)
    assert not (tmp_path / "m.onnx").exists()


class _ConvFrnGn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.frn = registry.REGISTRY["frn"].example(8, torch.Generator().manual_seed(2))
        self.gn = torch.nn.GroupNorm(4, 8)

    def forward(self, x):
        return self.gn(self.frn(self.conv(x)))


def test_dynamic_spatial_runs_at_two_sizes(tmp_path):
    model = _ConvFrnGn().eval()
    report = normexport.export(model, torch.randn(2, 3, 9, 11), tmp_path / "m.onnx", dynamic_spatial=True)
    assert report.dynamic_spatial and "dynamic spatial" in str(report)
    dims = [d.dim_param or d.dim_value for d in onnx.load(tmp_path / "m.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "x_height", "x_width"]
    for shape in [(1, 3, 6, 17), (3, 3, 16, 12)]:
        _ort_vs_torch(tmp_path / "m.onnx", model, (torch.randn(shape) * 2 + 0.5,))


def test_dynamic_spatial_refused_names_the_layer(tmp_path):
    from normexport.nn import PositionalNorm
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), PositionalNorm(4, affine=True, input_size=(5, 7))).eval()
    with pytest.raises(ExportError, match=r"dynamic_spatial.*height = 5.*layer 1 \(PositionalNorm\)"):
        normexport.export(model, torch.randn(2, 3, 5, 7), tmp_path / "m.onnx", dynamic_spatial=True,
                          custom_ops=False)
    assert not (tmp_path / "m.onnx").exists()


ALL_SPECS = list(registry.REGISTRY.values())


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("path", ["native", "function"])
def test_every_entry_exports_with_parity(spec, path, tmp_path, library):
    """Every registry entry, whatever its rule (fold, standard op, composite, custom op), in
    ORT CPU with and without the op library: float32 bounds vs the float64 reference and vs
    torch eval, at a batch other than the traced one."""
    gen = torch.Generator().manual_seed(spec.row)
    layer = spec.example(C, gen).eval()
    normexport.export(layer, spec.inputs(layer, 2, gen), tmp_path / "m.onnx")
    inputs = spec.inputs(layer, 5, gen)
    sess = normexport.session(tmp_path / "m.onnx", ["CPUExecutionProvider"], use_library=(path == "native"))
    ys = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
    np_inputs = tuple(t.double().numpy() if t.is_floating_point() else t.numpy() for t in inputs)
    tol = spec.tolerances["float32"]
    result = normexport.compare(ys, spec.reference(layer, np_inputs, False).outputs, tolerance=tol)
    assert result, str(result)
    with torch.no_grad():
        out = layer(*inputs)
    torch_eval = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    assert normexport.compare(ys, torch_eval, tolerance=tol), "ORT vs torch eval"
