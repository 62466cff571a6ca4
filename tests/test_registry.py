"""The registry is complete and self-consistent, entry by entry."""

import onnx
import pytest
import torch

from normexport import registry
from normexport.ops import DOMAIN


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_entry_is_complete(name):
    spec = registry.REGISTRY[name]
    assert spec.name == name
    assert 1 <= spec.row <= 18
    layer = spec.example(4, torch.Generator().manual_seed(0))
    assert registry.spec_for(layer) is spec
    assert {"float32", "float16"} <= set(spec.tolerances)


@pytest.mark.parametrize("spec", [s for s in registry.REGISTRY.values()
                                  if isinstance(s.export, registry.CustomOp)], ids=lambda s: s.name)
@pytest.mark.parametrize("opset", [18, 20, 21])
def test_function_body_is_valid_onnx(spec, opset):
    fn = spec.export.function(opset)
    assert fn.domain == DOMAIN and fn.name == spec.export.op_type
    assert [o.version for o in fn.opset_import if o.domain == ""] == [opset]
    model = onnx.helper.make_model(
        onnx.helper.make_graph([], "g", [], []), functions=[fn],
        opset_imports=[onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(DOMAIN, 1)])
    onnx.checker.check_model(model, full_check=True)


def test_function_body_refuses_old_opset():
    with pytest.raises(ValueError, match="opset >= 15"):
        registry.REGISTRY["frn"].export.function(14)


def test_unknown_module_has_no_spec():
    assert registry.spec_for(torch.nn.ReLU()) is None
