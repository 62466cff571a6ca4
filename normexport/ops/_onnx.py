"""Small helpers to write the ONNX function bodies of the ``normexport`` ops."""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

DOMAIN = "normexport"
DOMAIN_VERSION = 1
#: Lowest default-domain opset the function bodies are written for (ReduceMean with axes input).
MIN_OPSET = 18


class FunctionBody:
    """Collects nodes of a function body with generated value names."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        o = out or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [o], **attrs))
        return o

    def const_i64(self, values: list[int]) -> str:
        o = self._fresh("const")
        self.nodes.append(helper.make_node(
            "Constant", [], [o], value=helper.make_tensor(o, TensorProto.INT64, [len(values)], values)))
        return o

    def attr_const(self, attr_name: str, kind: str) -> str:
        """A Constant node whose value is the function's attribute ``attr_name``.

        ``kind`` is "float" or "int"."""
        o = self._fresh(attr_name)
        node = helper.make_node("Constant", [], [o])
        a = AttributeProto()
        a.name = f"value_{kind}"
        a.ref_attr_name = attr_name
        a.type = AttributeProto.FLOAT if kind == "float" else AttributeProto.INT
        node.attribute.append(a)
        self.nodes.append(node)
        return o

    def build(self, inputs: list[str], outputs: list[str], opset: int, defaults: dict,
              doc: str) -> onnx.FunctionProto:
        if opset < MIN_OPSET:
            raise ValueError(f"normexport::{self.name}: the function body needs default-domain "
                             f"opset >= {MIN_OPSET}, the model uses {opset}")
        return helper.make_function(
            DOMAIN, self.name, inputs, outputs, self.nodes,
            opset_imports=[helper.make_opsetid("", opset)],
            attribute_protos=[helper.make_attribute(k, v) for k, v in defaults.items()],
            doc_string=doc)
