"""``normexport::AdaIN``: the exported form of Adaptive Instance Normalization
(``normexport.nn.adain``).

Contract (domain ``normexport``, version 1):
  inputs   content (N, C, *spatial), style (N, C, *spatial'): same rank (>= 3), batch and
           channels, spatial sizes may differ; both of type T in {float, float16}
  attrs    epsilon: float = 1e-5, alpha: float = 1.0 (content-style trade-off, in [0, 1])
  output   Y, shape and type of content
  math     per sample n and channel c, over the spatial dims (biased variance):
             sigma(t) = sqrt(var(t[n, c]) + epsilon)
             A = sigma(style) * (content - mean(content)) / sigma(content) + mean(style)
             Y = alpha * A + (1 - alpha) * content
The function body computes in float64 and casts back to T.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from onnxscript import opset18 as _op

from ..nn.adain import AdaIN, _adain, _check
from ._onnx import DOMAIN, DOMAIN_VERSION, FunctionBody

OP_TYPE = "AdaIN"


@torch.library.custom_op("normexport::adain", mutates_args=())
def adain_op(content: torch.Tensor, style: torch.Tensor, epsilon: float, alpha: float) -> torch.Tensor:
    return _adain(content, style, epsilon, alpha)


@adain_op.register_fake
def _(content, style, epsilon, alpha):
    return torch.empty_like(content)


_nx = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


@onnxscript.script(_nx, default_opset=_op)
def adain_translation(content, style, epsilon: float, alpha: float) -> FLOAT:
    return _nx.AdaIN(content, style, epsilon=epsilon, alpha=alpha)


def adain_call(module: AdaIN, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Call the custom op with the layer's eps and alpha (used during export)."""
    _check(type(module).__name__, content, style, module.num_features)
    return torch.ops.normexport.adain(content, style, float(module.eps), float(module.alpha))


def adain_function(opset: int) -> onnx.FunctionProto:
    f = FunctionBody(OP_TYPE)
    shp, n, c, s = f.split_shape("content")
    nc = f.op("Concat", n, c, axis=0)
    _, _, _, s_style = f.split_shape("style")
    eps = f.op("Cast", f.attr_const("epsilon", "float"), to=onnx.TensorProto.DOUBLE)
    axis2 = f.const_i64([2])

    def moments(t):
        mean = f.op("ReduceMean", t, axis2, keepdims=1)
        d = f.op("Sub", t, mean)
        sigma = f.op("Sqrt", f.op("Add", f.op("ReduceMean", f.op("Mul", d, d), axis2, keepdims=1), eps))
        return mean, d, sigma

    x3 = f.reshape(f.double("content"), f.op("Concat", nc, s, axis=0))             # (N, C, S)
    y3 = f.reshape(f.double("style"), f.op("Concat", nc, s_style, axis=0))         # (N, C, S')
    _, dx, sigma_x = moments(x3)
    mean_y, _, sigma_y = moments(y3)
    a = f.op("Add", f.op("Mul", f.op("Div", sigma_y, sigma_x), dx), mean_y)
    alpha = f.op("Cast", f.attr_const("alpha", "float"), to=onnx.TensorProto.DOUBLE)
    one_minus = f.op("Sub", f.op("CastLike", f.const_i64([1]), alpha), alpha)
    y = f.op("Add", f.op("Mul", alpha, a), f.op("Mul", one_minus, x3))
    f.op("CastLike", f.reshape(y, shp), "content", out="Y")
    return f.build(["content", "style"], ["Y"], opset, {"epsilon": 1e-5, "alpha": 1.0}, doc=__doc__)


#: The overload the exporter sees in the traced graph (key of the translation table).
ADAIN_OVERLOAD = torch.ops.normexport.adain.default
