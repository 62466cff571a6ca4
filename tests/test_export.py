"""Exported custom-op norms in ONNX Runtime, through the native kernel and through the ONNX
function fallback, against the float64 reference: norm x provider x dtype x path x batch."""

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
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(NP_DTYPES[dtype]))
    layer = exported(spec, dtype)[0]
    x = spec.inputs(layer, 2, torch.Generator())[0]
    assert [d.dim_value for d in out.shape.dim][1:] == list(x.shape[1:])
    assert out.shape.dim[0].dim_param  # dynamic batch


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
