"""Small helpers to write the ONNX function bodies of the ``normexport`` ops."""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DOMAIN = "normexport"
DOMAIN_VERSION = 1
#: Lowest default-domain opset a function body can be built for: CastLike needs 15. The bodies
#: are written in opset-18 form (Reduce* with an ``axes`` input); ``FunctionBody.build`` rewrites
#: them to the ``axes`` attribute for opsets 15-17, so that graphs from older exporters can hold
#: normexport nodes (``normexport fold`` fuses into them).
MIN_OPSET = 15
#: Reduce ops whose ``axes`` moved from an attribute to an input in opset 18 (ReduceSum: 13).
_AXES_INPUT_SINCE_18 = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


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

    def const_f64(self, values: list[float]) -> str:
        o = self._fresh("const")
        self.nodes.append(helper.make_node(
            "Constant", [], [o], value=helper.make_tensor(o, TensorProto.DOUBLE, [len(values)], values)))
        return o

    def double(self, name: str) -> str:
        """``name`` cast to float64 (the bodies compute in double and CastLike back)."""
        return self.op("Cast", name, to=TensorProto.DOUBLE)

    def reshape(self, data: str, shape: str) -> str:
        """Reshape to a shape computed from real dims (allowzero: an empty dim stays empty, no
        -1 inference, which divides by zero on empty tensors)."""
        return self.op("Reshape", data, shape, allowzero=1)

    def split_shape(self, x: str) -> tuple[str, str, str, str]:
        """(shape, N, C, S) of ``x`` (N, C, *spatial): N and C as 1-element int64 tensors, S the
        product of the spatial dims (1 for rank 2), so that ``x`` reshapes to (N, C, S) for any
        spatial rank and any batch, empty included."""
        shp = self.op("Shape", x)
        n = self.op("Slice", shp, self.const_i64([0]), self.const_i64([1]))
        c = self.op("Slice", shp, self.const_i64([1]), self.const_i64([2]))
        s = self.op("ReduceProd", self.op("Slice", shp, self.const_i64([2]), self.const_i64([2**62])),
                    keepdims=1)
        return shp, n, c, s

    def per_channel(self, name: str, c: str) -> str:
        """A (C) input in float64 as (C, 1), broadcasting over (N, C, S); a length other than
        C fails the Reshape instead of broadcasting silently."""
        return self.reshape(self.double(name), self.op("Concat", c, self.const_i64([1]), axis=0))

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

    def _nodes_for(self, opset: int) -> list[onnx.NodeProto]:
        """The body's nodes for ``opset``: below 18, a Reduce* ``axes`` input (always a Constant
        of this body) becomes the ``axes`` attribute."""
        if opset >= 18:
            return list(self.nodes)
        consts = {n.output[0]: n for n in self.nodes if n.op_type == "Constant"}
        out = []
        for n in self.nodes:
            if n.op_type in _AXES_INPUT_SINCE_18 and len(n.input) > 1 and n.input[1]:
                c = consts.get(n.input[1])
                if c is None or not c.attribute or c.attribute[0].name != "value":
                    raise ValueError(f"normexport::{self.name}: {n.op_type} axes '{n.input[1]}' is not "
                                     f"a constant of the body; cannot build it for opset {opset}")
                axes = [int(v) for v in numpy_helper.to_array(c.attribute[0].t).reshape(-1)]
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                n = helper.make_node(n.op_type, [n.input[0]], list(n.output), name=n.name, axes=axes, **attrs)
            out.append(n)
        return out

    def build(self, inputs: list[str], outputs: list[str], opset: int, defaults: dict,
              doc: str, required: list[str] = ()) -> onnx.FunctionProto:
        """``defaults``: attributes with their default values; ``required``: attributes
        without a default (a node must set them)."""
        if opset < MIN_OPSET:
            raise ValueError(f"normexport::{self.name}: the function body needs default-domain "
                             f"opset >= {MIN_OPSET}, the model uses {opset}")
        return helper.make_function(
            DOMAIN, self.name, inputs, outputs, self._nodes_for(opset),
            opset_imports=[helper.make_opsetid("", opset)],
            attributes=list(required),
            attribute_protos=[helper.make_attribute(k, v) for k, v in defaults.items()],
            doc_string=doc)


def channel_layout(f: FunctionBody, x: str) -> tuple[str, str, str, str, str]:
    """(shape, N, C, A, B) of ``x`` for the function's ``channels_last`` attribute, all 1-element
    int64 tensors but the shape: ``x`` reshapes to (N, A, C, B) for any rank >= 2 and either
    layout, channels first (N, 1, C, prod(spatial)) or channels last (N, prod(spatial), C, 1).
    N is multiplied by 0 when channels_last is neither 0 nor 1, so the Reshape fails (unless
    X is empty)."""
    shp = f.op("Shape", x)
    cl = f.reshape(f.attr_const("channels_last", "int"), f.const_i64([1]))
    last = f.op("Equal", cl, f.const_i64([1]))
    valid = f.op("Cast", f.op("Or", last, f.op("Equal", cl, f.const_i64([0]))), to=onnx.TensorProto.INT64)
    n = f.op("Mul", f.op("Slice", shp, f.const_i64([0]), f.const_i64([1])), valid)
    c = f.op("Where", last, f.op("Slice", shp, f.const_i64([-1]), f.const_i64([2**62])),
             f.op("Slice", shp, f.const_i64([1]), f.const_i64([2])))
    s = f.op("Where", last,
             f.op("ReduceProd", f.op("Slice", shp, f.const_i64([1]), f.const_i64([-1])), keepdims=1),
             f.op("ReduceProd", f.op("Slice", shp, f.const_i64([2]), f.const_i64([2**62])), keepdims=1))
    one = f.const_i64([1])
    return shp, n, c, f.op("Where", last, s, one), f.op("Where", last, one, s)
